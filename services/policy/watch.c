/*
 * watch.c - Policy/WatchRevision as a deferred stream: an open watch holds
 * no thread. The handler (inline on the completion-queue thread: it only
 * takes s->mu) sends the revision in force and lists the watcher;
 * pol_install tells every listed watcher of each new revision; the drain
 * ends them all (the clients reconnect to another replica). Whoever takes
 * a watcher off the list (a send that finds the client gone, on_cancel,
 * the drain) finishes its call and frees it, exactly once.
 */
#include "policy.h"
#include "err.h"
#include "rpc.h"

#include "slipway/v1/policy.pb-c.h"

#include <stdlib.h>

struct pol_rwatch {
	struct pol_rwatch *next;
	struct pol_service *s;
	struct rpc_ctx *ctx;
};

/* Sends rev. 0, or non-zero when the client is gone. Under s->mu. */
static int send_rev(struct pol_rwatch *w, uint64_t rev)
{
	Slipway__V1__GetRevisionResponse m = SLIPWAY__V1__GET_REVISION_RESPONSE__INIT;
	m.revision = rev;
	int rc = rpc_send_async(w->ctx, &m.base);
	return rc == SW_ELIMIT ? 0 : rc; /* not reading: it gets a newer one later */
}

/* Unlinks w if listed. Under s->mu. Returns 1 if it was. */
static int unlink_watch(struct pol_service *s, struct pol_rwatch *w)
{
	for (struct pol_rwatch **pp = &s->rwatchers; *pp != NULL; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			s->nwatchers--;
			return 1;
		}
	return 0;
}

/* Finishes and frees a list of unlinked watchers. Not under s->mu. */
static void finish_all(struct pol_rwatch *list, int code)
{
	while (list != NULL) {
		struct pol_rwatch *w = list;
		list = w->next;
		rpc_finish(w->ctx, code);
		free(w);
	}
}

static void on_cancel(struct rpc_ctx *ctx, void *arg)
{
	struct pol_rwatch *w = arg;
	struct pol_service *s = w->s;
	pthread_mutex_lock(&s->mu);
	int mine = unlink_watch(s, w);
	pthread_mutex_unlock(&s->mu);
	if (mine) {
		rpc_finish(ctx, SW_ECANCELLED);
		free(w);
	}
}

int pol_watch_revision(struct rpc_ctx *ctx, struct pol_service *s, char *err, size_t errlen)
{
	pthread_mutex_lock(&s->mu);
	if (s->draining) {
		pthread_mutex_unlock(&s->mu);
		return sw_errf(err, errlen, SW_EUNAVAIL, "shutting down");
	}
	if (s->nwatchers >= s->max_watchers) {
		pthread_mutex_unlock(&s->mu);
		return sw_errf(err, errlen, SW_ELIMIT, "too many revision watchers (%d, --max-watchers)",
			       s->max_watchers);
	}
	s->nwatchers++; /* reserved */
	pthread_mutex_unlock(&s->mu);
	struct pol_rwatch *w = calloc(1, sizeof *w);
	if (w == NULL) {
		pthread_mutex_lock(&s->mu);
		s->nwatchers--;
		pthread_mutex_unlock(&s->mu);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	w->s = s;
	w->ctx = ctx;
	rpc_stream_defer(ctx, on_cancel, w);
	/* From here the call is ours to finish, exactly once. */
	pthread_mutex_lock(&s->mu);
	int over = s->draining || send_rev(w, s->cur->revision) != 0;
	if (!over) {
		w->next = s->rwatchers;
		s->rwatchers = w;
	} else {
		s->nwatchers--;
	}
	pthread_mutex_unlock(&s->mu);
	if (over) {
		finish_all(w, 0);
		return RPC_DEFERRED;
	}
	/* Cancelled before rpc_stream_defer: on_cancel will not run. */
	if (rpc_cancelled(ctx)) {
		pthread_mutex_lock(&s->mu);
		int mine = unlink_watch(s, w);
		pthread_mutex_unlock(&s->mu);
		if (mine)
			finish_all(w, SW_ECANCELLED);
	}
	return RPC_DEFERRED;
}

struct pol_rwatch *pol_watch_notify_locked(struct pol_service *s)
{
	struct pol_rwatch *gone = NULL;
	for (struct pol_rwatch **pp = &s->rwatchers; *pp != NULL;) {
		struct pol_rwatch *w = *pp;
		if (send_rev(w, s->cur->revision) != 0) {
			*pp = w->next;
			s->nwatchers--;
			w->next = gone;
			gone = w;
		} else {
			pp = &w->next;
		}
	}
	return gone;
}

void pol_watch_finish(struct pol_rwatch *list)
{
	finish_all(list, SW_ECANCELLED);
}

void pol_watch_end_all(struct pol_service *s)
{
	pthread_mutex_lock(&s->mu);
	struct pol_rwatch *list = s->rwatchers;
	s->rwatchers = NULL;
	for (struct pol_rwatch *w = list; w != NULL; w = w->next)
		s->nwatchers--;
	pthread_mutex_unlock(&s->mu);
	finish_all(list, 0); /* the client reconnects to another replica */
}
