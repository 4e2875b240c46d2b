/*
 * metrics.c - the secrets service's Prometheus families (lib/metrics.h):
 * Fetch calls by outcome. Values never appear in a metric; nor do
 * deployment ids or agents (the audit log has those). Any thread.
 */
#include "secrets.h"
#include "err.h"
#include "metrics.h"

static const char *const outcomes[] = { "ok", "denied", "not_found", "invalid",
					"failed_precondition", "error" };

static const char *outcome(int rc)
{
	switch (rc) {
	case 0: return outcomes[0];
	case SW_EPERM:
	case SW_EUNAUTH: return outcomes[1];
	case SW_ENOTFOUND: return outcomes[2];
	case SW_EINVAL: return outcomes[3];
	case SW_EPRECOND: return outcomes[4];
	default: return outcomes[5];
	}
}

static struct metrics_family *fetches(void)
{
	return metrics_counter("slipway_secrets_fetches_total",
			       "Fetch calls (agents fetching a deployment's sealed bundle), by "
			       "outcome: ok, denied, not_found, invalid, failed_precondition, error.",
			       "outcome");
}

void sec_metrics_init(void)
{
	for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++)
		metrics_add(metrics_with(fetches(), outcomes[i]), 0);
}

void sec_metrics_fetch(int rc)
{
	metrics_add(metrics_with(fetches(), outcome(rc)), 1);
}
