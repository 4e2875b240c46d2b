/*
 * clock.h - the two clocks Slipway reads, in milliseconds: wall time (what
 * is stored, shown and compared across machines) and monotonic time (for
 * timeouts, intervals and durations, immune to clock steps). Any thread.
 */
#ifndef SLIPWAY_CLOCK_H
#define SLIPWAY_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t clock_wall_ms(void);

/* Milliseconds on CLOCK_MONOTONIC (an arbitrary origin). */
int64_t clock_mono_ms(void);

/* The time `ms` milliseconds from now on clock `which` (CLOCK_REALTIME for
 * a default pthread_cond_timedwait, CLOCK_MONOTONIC for a condition
 * variable set to it): an absolute deadline. Negative ms is now. Any
 * thread. */
struct timespec clock_after(clockid_t which, int64_t ms);

#endif
