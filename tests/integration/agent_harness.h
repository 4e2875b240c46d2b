/*
 * agent_harness.h - helpers for the agent's integration tests: pushing
 * bundles to the real artifact service, building bundles (malicious ones
 * included) and talking HTTP to the deployed demo application.
 */
#ifndef SLIPWAY_AGENT_HARNESS_H
#define SLIPWAY_AGENT_HARNESS_H

#include <stddef.h>

/* "sha256:<hex>" of a file into out[72]. Returns 0 or -1. */
int ah_file_digest(const char *path, char out[72]);

/* Pushes file as app@version to $SLIPWAY_ARTIFACT_ADDR as the stack's
 * admin user; digest (out[72]) is the service's answer. Returns 0 or the
 * SW_E* code with the message in err. */
int ah_push(const char *file, const char *app, const char *version, char digest[72], char *err,
	    size_t errlen);

/* Writes a .tar.gz at path holding a valid demo manifest plus one entry
 * named evil_name (a file, or a symlink to link_target when not NULL). */
void ah_evil_bundle(const char *path, const char *evil_name, const char *link_target);

/* Writes a .tar.gz at path holding slipway.json (the text given) and
 * bin/demo-app (a copy of app_bin, mode 0755). */
void ah_bundle(const char *path, const char *manifest, const char *app_bin);

/* GET path from 127.0.0.1:port. Returns the body (free()) and *status, or
 * NULL when nothing answers. */
char *ah_http_get(int port, const char *path, int *status);

/* Reads the pid in file (0 when missing). Alive = exists and not a zombie. */
int ah_read_pid(const char *file);
int ah_pid_alive(int pid);

/* Waits (up to timeout_ms) until every service's outbox is empty, i.e.
 * the audit events this test caused are in the audit log, so that the
 * next test of the suite does not see them arrive. */
void ah_wait_outbox_drained(int timeout_ms);

/* Stops the process group led by pid (the app an agent left running). */
void ah_kill_group(int pid);

#endif
