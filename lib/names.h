/*
 * names.h - the one spelling of an app, environment and version name in
 * the whole system. The artifact service creates releases under these
 * names and the orchestrator deploys them, so both check the same rules.
 * Pure; any thread.
 */
#ifndef SLIPWAY_NAMES_H
#define SLIPWAY_NAMES_H

#include <stddef.h>

#define NAME_APP_MAX 63
#define NAME_VERSION_MAX 128

/* An app or environment: [a-z0-9][a-z0-9-]{0,62}. NULL is not a name. */
int name_app_ok(const char *s);

/* A version: [A-Za-z0-9][A-Za-z0-9._+-]{0,127}, without "..". */
int name_version_ok(const char *s);

/* Free text that goes into records and statements (a repository, a ref, a
 * builder): printable ASCII (0x20-0x7e), at most max bytes. */
int name_text_ok(const char *s, size_t max);

#endif
