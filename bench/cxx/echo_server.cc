// Baseline for `bench/run rpc`: the stock gRPC C++ callback-API server
// answering slipway.test.v1.Echo/Say over mutual TLS (client certificate
// required and verified), as lib/rpc does. Benchmarks only; never shipped.
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "slipway/test/v1/echo.grpc.pb.h"

using slipway::test::v1::EchoRequest;
using slipway::test::v1::EchoResponse;

static std::string slurp(const char *path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class EchoImpl final : public slipway::test::v1::Echo::CallbackService {
  grpc::ServerUnaryReactor *Say(grpc::CallbackServerContext *ctx, const EchoRequest *req,
                                EchoResponse *resp) override {
    resp->set_text(req->text());
    resp->set_blob(req->blob());
    auto *r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
};

int main(int argc, char **argv) {
  if (argc != 6) {
    std::cerr << "usage: echo_server_cxx ADDR CA CERT KEY PORTFILE\n";
    return 2;
  }
  grpc::SslServerCredentialsOptions opts(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  opts.pem_root_certs = slurp(argv[2]);
  opts.pem_key_cert_pairs.push_back({slurp(argv[4]), slurp(argv[3])});
  EchoImpl svc;
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(argv[1], grpc::SslServerCredentials(opts), &port);
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  b.RegisterService(&svc);
  auto server = b.BuildAndStart();
  if (!server || port == 0) return 1;
  {
    std::ofstream pf(std::string(argv[5]) + ".tmp");
    pf << port << "\n";
  }
  std::rename((std::string(argv[5]) + ".tmp").c_str(), argv[5]);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sig;
  sigwait(&set, &sig);
  server->Shutdown();
  return 0;
}
