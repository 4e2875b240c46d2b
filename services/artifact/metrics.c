/*
 * metrics.c - the artifact service's Prometheus families (lib/metrics.h):
 * bundle bytes received by Push and sent by Pull. Any thread.
 */
#include "art.h"
#include "metrics.h"

static struct metrics_child *bytes(int out)
{
	return out ? metrics_with(metrics_counter("slipway_artifact_sent_bytes_total",
						  "Bundle bytes sent to clients by Pull.", NULL))
		   : metrics_with(metrics_counter("slipway_artifact_received_bytes_total",
						  "Bundle bytes received by Push (also of pushes "
						  "that failed later).",
						  NULL));
}

void art_metrics_init(void)
{
	metrics_add(bytes(0), 0);
	metrics_add(bytes(1), 0);
}

void art_metrics_bytes(int out, size_t n)
{
	metrics_add(bytes(out), (double)n);
}
