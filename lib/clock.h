/*
 * clock.h - the two clocks Slipway reads, in milliseconds: wall time (what
 * is stored, shown and compared across machines) and monotonic time (for
 * timeouts, intervals and durations, immune to clock steps). Any thread.
 */
#ifndef SLIPWAY_CLOCK_H
#define SLIPWAY_CLOCK_H

#include <stdint.h>

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t clock_wall_ms(void);

/* Milliseconds on CLOCK_MONOTONIC (an arbitrary origin). */
int64_t clock_mono_ms(void);

#endif
