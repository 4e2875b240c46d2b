/*
 * cfg.c - table-driven configuration: flag > environment > default, strict
 * parsing and range checks, --help and --check-config support.
 */
#include "cfg.h"
#include "err.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int cfg_parse_ll(const char *s, long long *out)
{
	if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
		return SW_EINVAL;
	errno = 0;
	char *end = NULL;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0')
		return SW_EINVAL;
	*out = v;
	return 0;
}

/* Splits "123unit" into a number and a unit suffix. */
static int number_and_unit(const char *s, long long *num, const char **unit)
{
	if (s == NULL || !isdigit((unsigned char)*s))
		return SW_EINVAL;
	errno = 0;
	char *end = NULL;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || end == s)
		return SW_EINVAL;
	*num = v;
	*unit = end;
	return 0;
}

static int mul_checked(long long a, long long b, long long *out)
{
	if (a != 0 && b > LLONG_MAX / a)
		return SW_EINVAL;
	*out = a * b;
	return 0;
}

int cfg_parse_ms(const char *s, long long *out)
{
	long long v;
	const char *u;
	if (number_and_unit(s, &v, &u) != 0)
		return SW_EINVAL;
	long long m;
	if (*u == '\0' || strcmp(u, "ms") == 0)
		m = 1;
	else if (strcmp(u, "s") == 0)
		m = 1000;
	else if (strcmp(u, "m") == 0)
		m = 60000;
	else if (strcmp(u, "h") == 0)
		m = 3600000;
	else
		return SW_EINVAL;
	return mul_checked(v, m, out);
}

int cfg_parse_size(const char *s, long long *out)
{
	long long v;
	const char *u;
	if (number_and_unit(s, &v, &u) != 0)
		return SW_EINVAL;
	long long m;
	if (*u == '\0' || strcmp(u, "B") == 0)
		m = 1;
	else if (strcmp(u, "KiB") == 0)
		m = 1LL << 10;
	else if (strcmp(u, "MiB") == 0)
		m = 1LL << 20;
	else if (strcmp(u, "GiB") == 0)
		m = 1LL << 30;
	else
		return SW_EINVAL;
	return mul_checked(v, m, out);
}

int cfg_parse_bool(const char *s, int *out)
{
	static const char *const yes[] = { "1", "true", "yes", "on" };
	static const char *const no[] = { "0", "false", "no", "off" };
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return SW_EINVAL;
}

static void env_name(char *buf, size_t len, const char *prefix, const char *name)
{
	int n = snprintf(buf, len, "SLIPWAY_%s%s", prefix, *prefix ? "_" : "");
	for (const char *p = name; *p && (size_t)n + 1 < len; p++, n++)
		buf[n] = (*p == '-') ? '_' : (char)toupper((unsigned char)*p);
	buf[(size_t)n < len ? (size_t)n : len - 1] = '\0';
}

static const char *type_name(enum cfg_type t)
{
	switch (t) {
	case CFG_STR: return "string";
	case CFG_PATH: return "path";
	case CFG_INT: return "int";
	case CFG_BOOL: return "bool";
	case CFG_MS: return "duration";
	case CFG_SIZE: return "size";
	}
	return "?";
}

/* Stores text value v into opt's destination, checking type and range. */
static int store(const struct cfg_opt *o, const char *v, const char *source,
		 char *err, size_t errlen)
{
	long long num = 0;
	int rc;
	switch (o->type) {
	case CFG_STR:
	case CFG_PATH: {
		char **dst = (char **)o->dst;
		char *copy = strdup(v);
		if (copy == NULL)
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		free(*dst);
		*dst = copy;
		return 0;
	}
	case CFG_BOOL:
		if (cfg_parse_bool(v, (int *)o->dst) != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "%s: --%s wants true or false", source, o->name);
		return 0;
	case CFG_INT: rc = cfg_parse_ll(v, &num); break;
	case CFG_MS: rc = cfg_parse_ms(v, &num); break;
	case CFG_SIZE: rc = cfg_parse_size(v, &num); break;
	default: rc = SW_EINVAL;
	}
	if (rc != 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s: --%s wants a %s", source,
			       o->name, type_name(o->type));
	if (num < o->min || num > o->max)
		return sw_errf(err, errlen, SW_EINVAL,
			       "%s: --%s must be between %lld and %lld", source,
			       o->name, o->min, o->max);
	*(long long *)o->dst = num;
	return 0;
}

#define SECRET_FILE_MAX 4096

/* Reads a secret's file (regular, not readable by group or others, at
 * most SECRET_FILE_MAX bytes, one line: a trailing newline is dropped)
 * and stores it into o. */
static int store_secret_file(const struct cfg_opt *o, const char *path, const char *source,
			     char *err, size_t errlen)
{
	char buf[SECRET_FILE_MAX + 1];
	struct stat st;
	int rc = 0;
	ssize_t got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s: --%s-file %s: %s", source, o->name, path,
			       strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: --%s-file %s is not a regular file", source,
			     o->name, path);
	} else if ((st.st_mode & 077) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL,
			     "%s: --%s-file %s is readable by others (chmod 600)", source, o->name,
			     path);
	} else {
		size_t used = 0;
		while (used < sizeof buf && (got = read(fd, buf + used, sizeof buf - used)) != 0) {
			if (got < 0 && errno == EINTR)
				continue;
			if (got < 0)
				break;
			used += (size_t)got;
		}
		if (got < 0 || used > SECRET_FILE_MAX) {
			rc = sw_errf(err, errlen, SW_EINVAL, "%s: --%s-file %s: unreadable or over %d bytes",
				     source, o->name, path, SECRET_FILE_MAX);
		} else {
			while (used > 0 && (buf[used - 1] == '\n' || buf[used - 1] == '\r'))
				used--;
			buf[used] = '\0';
			if (memchr(buf, '\n', used) != NULL || memchr(buf, '\0', used) != NULL)
				rc = sw_errf(err, errlen, SW_EINVAL, "%s: --%s-file %s holds more than one line",
					     source, o->name, path);
			else
				rc = store(o, buf, source, err, errlen);
		}
	}
	explicit_bzero(buf, sizeof buf);
	close(fd);
	return rc;
}

/* Whether a URL or connection string carries a password. */
static int has_password(const char *v)
{
	const char *scheme = strstr(v, "://");
	if (scheme != NULL) {
		const char *host = scheme + 3;
		size_t auth = strcspn(host, "/?#");
		const char *at = memchr(host, '@', auth);
		if (at != NULL && memchr(host, ':', (size_t)(at - host)) != NULL)
			return 1;
	}
	for (const char *p = v; (p = strcasestr(p, "password")) != NULL; p++) {
		const char *q = p + 8;
		while (*q == ' ')
			q++;
		if (*q == '=')
			return 1;
	}
	return 0;
}

static int find_opt(const struct cfg_opt *opts, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return (int)i;
	return -1;
}

int cfg_parse(const char *prefix, struct cfg_opt *opts, size_t n, int argc,
	      char **argv, char *err, size_t errlen)
{
	int want = CFG_RUN;
	/* Defaults first, then the environment; flags override both below. */
	for (size_t i = 0; i < n; i++) {
		if (opts[i].type == CFG_STR || opts[i].type == CFG_PATH) {
			/* Destinations start NULL (or hold a previous parse's value). */
			free(*(char **)opts[i].dst);
			*(char **)opts[i].dst = NULL;
		}
		int rc = store(&opts[i], opts[i].def ? opts[i].def : "", "default",
			       err, errlen);
		if (rc != 0 && opts[i].def != NULL)
			return rc;
		char env[128];
		env_name(env, sizeof env, prefix, opts[i].name);
		const char *ev = getenv(env);
		if (ev != NULL && (rc = store(&opts[i], ev, env, err, errlen)) != 0)
			return rc;
		if (opts[i].flags & CFG_SECRET) {
			char fenv[160];
			snprintf(fenv, sizeof fenv, "%s_FILE", env);
			const char *fv = getenv(fenv);
			if (fv != NULL && fv[0] != '\0' &&
			    (rc = store_secret_file(&opts[i], fv, fenv, err, errlen)) != 0)
				return rc;
		}
	}
	for (int a = 1; a < argc; a++) {
		const char *arg = argv[a];
		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			want = CFG_HELP;
			continue;
		}
		if (strcmp(arg, "--check-config") == 0) {
			want = want == CFG_HELP ? CFG_HELP : CFG_CHECK;
			continue;
		}
		if (strncmp(arg, "--", 2) != 0)
			return sw_errf(err, errlen, SW_EINVAL, "unexpected argument '%s'", arg);
		const char *name = arg + 2;
		const char *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		int idx = find_opt(opts, n, name, len);
		int from_file = 0;
		if (idx < 0 && len > 5 && strncmp(name + len - 5, "-file", 5) == 0) {
			idx = find_opt(opts, n, name, len - 5);
			from_file = 1;
			if (idx >= 0 && !(opts[idx].flags & CFG_SECRET))
				idx = -1;
		}
		if (idx < 0)
			return sw_errf(err, errlen, SW_EINVAL, "unknown flag '--%.*s' (see --help)",
				       (int)len, name);
		if ((opts[idx].flags & CFG_SECRET) && !from_file) {
			char env[128];
			env_name(env, sizeof env, prefix, opts[idx].name);
			return sw_errf(err, errlen, SW_EINVAL,
				       "--%s takes a secret, which a flag would show in the process "
				       "list: set %s, or name a file (mode 0600) with --%s-file or %s_FILE",
				       opts[idx].name, env, opts[idx].name, env);
		}
		const char *val;
		if (eq != NULL) {
			val = eq + 1;
		} else if (opts[idx].type == CFG_BOOL &&
			   (a + 1 >= argc || strncmp(argv[a + 1], "--", 2) == 0)) {
			val = "true";
		} else {
			if (a + 1 >= argc)
				return sw_errf(err, errlen, SW_EINVAL, "--%s needs a value",
					       opts[idx].name);
			val = argv[++a];
		}
		int rc = from_file ? store_secret_file(&opts[idx], val, "flag", err, errlen)
				   : store(&opts[idx], val, "flag", err, errlen);
		if (rc != 0)
			return rc;
	}
	for (size_t i = 0; i < n; i++) {
		const char *v = (opts[i].type == CFG_STR || opts[i].type == CFG_PATH)
					? *(char **)opts[i].dst
					: NULL;
		if ((opts[i].flags & CFG_NO_PASSWORD) && v != NULL && has_password(v))
			return sw_errf(err, errlen, SW_EINVAL,
				       "--%s must not hold a password (it would show in the process "
				       "list and in --check-config): give it to libpq in PGPASSFILE "
				       "(a .pgpass file, mode 0600) or PGPASSWORD",
				       opts[i].name);
	}
	if (want == CFG_HELP)
		return CFG_HELP;
	for (size_t i = 0; i < n; i++) {
		if (!(opts[i].flags & CFG_REQUIRED))
			continue;
		if ((opts[i].type == CFG_STR || opts[i].type == CFG_PATH) &&
		    (*(char **)opts[i].dst == NULL || **(char **)opts[i].dst == '\0')) {
			char env[128];
			env_name(env, sizeof env, prefix, opts[i].name);
			if (opts[i].flags & CFG_SECRET)
				return sw_errf(err, errlen, SW_EINVAL,
					       "%s (or --%s-file, or %s_FILE) is required", env,
					       opts[i].name, env);
			return sw_errf(err, errlen, SW_EINVAL, "--%s (or %s) is required",
				       opts[i].name, env);
		}
	}
	return want;
}

void cfg_print_help(FILE *f, const char *prog, const char *prefix,
		    const struct cfg_opt *opts, size_t n)
{
	fprintf(f, "usage: %s [--flag value ...] [--check-config] [--help]\n\n", prog);
	fprintf(f, "A flag overrides its environment variable, which overrides the default.\n\n");
	for (size_t i = 0; i < n; i++) {
		char env[128];
		env_name(env, sizeof env, prefix, opts[i].name);
		fprintf(f, "  --%-22s %-34s %-8s", opts[i].name, env, type_name(opts[i].type));
		if (opts[i].flags & CFG_SECRET)
			fprintf(f, " secret");
		if (opts[i].flags & CFG_REQUIRED)
			fprintf(f, " required");
		fprintf(f, "\n      %s", opts[i].help);
		if (opts[i].flags & CFG_SECRET)
			fprintf(f, " (never as a flag: set %s, or name a file of mode 0600 with "
				   "--%s-file or %s_FILE)",
				env, opts[i].name, env);
		if (opts[i].flags & CFG_NO_PASSWORD)
			fprintf(f, " (no password in it: use PGPASSFILE or PGPASSWORD)");
		if (opts[i].def && *opts[i].def)
			fprintf(f, " [default: %s]", opts[i].def);
		if (opts[i].type == CFG_INT || opts[i].type == CFG_MS || opts[i].type == CFG_SIZE)
			fprintf(f, " [range: %lld..%lld]", opts[i].min, opts[i].max);
		fprintf(f, "\n");
	}
}

void cfg_print_values(FILE *f, const struct cfg_opt *opts, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct cfg_opt *o = &opts[i];
		fprintf(f, "%s=", o->name);
		switch (o->type) {
		case CFG_STR:
		case CFG_PATH: {
			const char *v = *(char **)o->dst;
			if (o->flags & CFG_SECRET)
				fprintf(f, "%s\n", v && *v ? "(set)" : "(empty)");
			else
				fprintf(f, "%s\n", v ? v : "");
			break;
		}
		case CFG_BOOL:
			fprintf(f, "%s\n", *(int *)o->dst ? "true" : "false");
			break;
		default:
			fprintf(f, "%lld\n", *(long long *)o->dst);
		}
	}
}

void cfg_free(struct cfg_opt *opts, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (opts[i].type == CFG_STR || opts[i].type == CFG_PATH) {
			free(*(char **)opts[i].dst);
			*(char **)opts[i].dst = NULL;
		}
	}
}
