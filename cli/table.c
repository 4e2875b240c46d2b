/*
 * table.c - tables for people: every column as wide as its widest cell,
 * so long names, IDs and scopes never push the columns out of line
 * (`-o json` is the form for programs and is not affected).
 */
#include "cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_MAX_CELLS (1u << 20) /* a hard cap: past it rows are dropped */

int cli_table_init(struct cli_table *t, const char *align, ...)
{
	va_list ap;
	memset(t, 0, sizeof *t);
	t->align = align;
	t->ncols = (int)strlen(align);
	if (t->ncols < 1 || t->ncols > CLI_TABLE_COLS)
		return -1;
	va_start(ap, align);
	for (int i = 0; i < t->ncols; i++)
		t->head[i] = va_arg(ap, const char *);
	va_end(ap);
	return 0;
}

int cli_table_row(struct cli_table *t, ...)
{
	va_list ap;
	if (t->n + (size_t)t->ncols > TABLE_MAX_CELLS) {
		t->dropped++;
		return -1;
	}
	if (t->n + (size_t)t->ncols > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : (size_t)t->ncols * 64;
		char **p = realloc(t->cells, cap * sizeof *p);
		if (p == NULL) {
			t->dropped++;
			return -1;
		}
		t->cells = p;
		t->cap = cap;
	}
	va_start(ap, t);
	for (int i = 0; i < t->ncols; i++) {
		const char *s = va_arg(ap, const char *);
		t->cells[t->n + (size_t)i] = strdup(s ? s : "");
	}
	va_end(ap);
	t->n += (size_t)t->ncols;
	return 0;
}

void cli_table_print(struct cli_table *t, FILE *f)
{
	size_t w[CLI_TABLE_COLS];
	for (int i = 0; i < t->ncols; i++)
		w[i] = strlen(t->head[i]);
	for (size_t k = 0; k < t->n; k++) {
		const char *s = t->cells[k] ? t->cells[k] : "";
		size_t col = k % (size_t)t->ncols;
		if (strlen(s) > w[col])
			w[col] = strlen(s);
	}
	for (size_t r = 0; r <= t->n / (size_t)t->ncols; r++) {
		for (int i = 0; i < t->ncols; i++) {
			const char *s = r == 0 ? t->head[i] : t->cells[(r - 1) * (size_t)t->ncols + (size_t)i];
			int last = i == t->ncols - 1;
			if (s == NULL)
				s = "";
			if (t->align[i] == 'r')
				fprintf(f, "%*s", (int)w[i], s);
			else if (last)
				fputs(s, f);
			else
				fprintf(f, "%-*s", (int)w[i], s);
			fputs(last ? "\n" : "  ", f);
		}
	}
	if (t->dropped)
		fprintf(f, "(%zu more rows not shown: over the table's cap; use -o json)\n", t->dropped);
}

void cli_table_free(struct cli_table *t)
{
	for (size_t k = 0; k < t->n; k++)
		free(t->cells[k]);
	free(t->cells);
	memset(t, 0, sizeof *t);
}
