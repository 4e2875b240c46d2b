/*
 * cfg.h - one configuration table per binary.
 *
 * Each option has a name ("pg-url"), from which the flag (--pg-url) and the
 * environment variable (SLIPWAY_<PREFIX>_PG_URL, or SLIPWAY_PG_URL when the
 * prefix is empty) are derived, so the three can never drift apart. Values
 * come from the flag, else the environment, else the default. Ranges are
 * checked for numbers, sizes and durations. Options marked CFG_SECRET are
 * never printed and never taken from a flag (environment or a file only). `--help` prints the table and `--check-config` validates
 * and prints the effective values; the caller then exits 0.
 */
#ifndef SLIPWAY_CFG_H
#define SLIPWAY_CFG_H

#include <stdio.h>

enum cfg_type {
	CFG_STR,  /* const char *: text */
	CFG_PATH, /* const char *: a file system path */
	CFG_INT,  /* long long: decimal integer */
	CFG_BOOL, /* int: true/false/1/0/yes/no/on/off */
	CFG_MS,   /* long long milliseconds: "250ms", "2s", "5m", "1h" or bare ms */
	CFG_SIZE, /* long long bytes: "512", "64KiB", "8MiB", "1GiB" */
};

enum {
	/* A secret: never printed (--check-config shows "(set)"), and never
	 * taken from a flag, which any local user reads in the process list:
	 * it comes from the environment variable, or from a file named by
	 * --<name>-file / SLIPWAY_..._<NAME>_FILE (mode 0600, one line). A
	 * flag carrying the value is refused with a message naming both. */
	CFG_SECRET = 1,
	CFG_REQUIRED = 2, /* an empty value is an error */
	/* A URL or libpq connection string that must not hold a password
	 * ("user:pass@", "password="): libpq reads it from PGPASSFILE or
	 * PGPASSWORD instead. */
	CFG_NO_PASSWORD = 4,
};

struct cfg_opt {
	const char *name;  /* lower-case words joined by '-' */
	enum cfg_type type;
	const char *def;   /* default as text; NULL means empty */
	long long min;     /* inclusive range for INT, MS and SIZE (min <= max) */
	long long max;
	int flags;
	const char *help;  /* one line */
	void *dst;         /* char ** (NULL at first) | long long * | int *, by type */
};

/* What cfg_parse asks of its caller besides running normally. */
enum { CFG_RUN = 0, CFG_HELP = 1, CFG_CHECK = 2 };

/*
 * Parses argv (flags only: "--name value" or "--name=value") against opts,
 * filling every dst. `prefix` is the upper-case service part of the
 * environment variables ("AUDIT"), or "" for none. Returns CFG_RUN,
 * CFG_HELP (--help), CFG_CHECK (--check-config, after validation passed),
 * or SW_EINVAL with the first problem in err. String values are owned by
 * the table until cfg_free(). Main thread, before other threads start.
 */
int cfg_parse(const char *prefix, struct cfg_opt *opts, size_t n, int argc,
	      char **argv, char *err, size_t errlen);

/* Prints the option table (flag, environment variable, type, default,
 * range, help) to f. */
void cfg_print_help(FILE *f, const char *prog, const char *prefix,
		    const struct cfg_opt *opts, size_t n);

/* Prints the effective values, one "name=value" per line, secrets masked. */
void cfg_print_values(FILE *f, const struct cfg_opt *opts, size_t n);

/* Frees the strings cfg_parse stored in the table's destinations. */
void cfg_free(struct cfg_opt *opts, size_t n);

/* Strict number parsers shared by the tree (no atoi). Each returns 0, or
 * SW_EINVAL when s is empty, has trailing junk or overflows. */
int cfg_parse_ll(const char *s, long long *out);
int cfg_parse_ms(const char *s, long long *out);
int cfg_parse_size(const char *s, long long *out);
int cfg_parse_bool(const char *s, int *out);

#endif
