// Starts the pinned npm S3 server (s3rver 3.7.1) for the local stack and
// the tests: bound to 127.0.0.1 on S3_PORT (0 = a free port, written to
// S3_PORT_FILE), with our own access key pair instead of s3rver's fixed
// S3RVER/S3RVER, and the bucket created at start-up through s3rver's own
// configureBuckets (libs3 signs bucket-level requests differently from
// s3rver, so Slipway only ever makes object-level requests).
//
// Environment: S3_MODULES (the node_modules folder holding s3rver), S3_DIR,
// S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, S3_PORT, S3_PORT_FILE.
'use strict';
const fs = require('fs');
const path = require('path');

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`launch.js: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const modules = need('S3_MODULES');
const S3rver = require(path.join(modules, 's3rver'));
const AWSAccount = require(path.join(modules, 's3rver/lib/models/account'));

AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
AWSAccount.DUMMY_ACCOUNT.createKeyPair(need('S3_ACCESS_KEY'), need('S3_SECRET_KEY'));

const server = new S3rver({
  address: '127.0.0.1',
  port: Number(process.env.S3_PORT || 0),
  silent: true,
  directory: need('S3_DIR'),
  configureBuckets: [{ name: need('S3_BUCKET') }],
});

server.run((err, addr) => {
  if (err) {
    console.error(`launch.js: ${err.message}`);
    process.exit(1);
  }
  const file = process.env.S3_PORT_FILE;
  if (file) {
    fs.writeFileSync(file + '.tmp', `${addr.port}\n`);
    fs.renameSync(file + '.tmp', file);
  }
  console.error(`s3rver listening on 127.0.0.1:${addr.port}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
