/* defines.c -- `--set K=V[,K=V...]` into ptc_define records.
 *
 * Only the shape of the list is checked here (names and '='); whether a
 * name is a constant of the file and whether its value is a number is
 * checked by the compile, which knows the file and reports against the same
 * "<command line>" text.
 */
#include <string.h>

#include "frontend/ptg_internal.h"

static bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static bool is_name_char(char c) {
  return is_name_start(c) || (c >= '0' && c <= '9') || c == '.';
}
static bool is_blank(char c) { return c == ' ' || c == '\t'; }

static int cmdline_error(ptc_ctx *ctx, const char *text, size_t at,
                         const char *msg) {
  ptc_ctx_add_source(ctx, "<command line>", text, strlen(text));
  ptc_loc loc = {ptc_intern_cstr(ctx, "<command line>"), 1, (int32_t)at + 1};
  ptc_error(ctx, loc, "%s", msg);
  return -1;
}

int ptc_defines_parse(ptc_ctx *ctx, const char *text, ptc_define **out,
                      int32_t *n) {
  size_t len = strlen(text);
  if (len > (1u << 20))
    return cmdline_error(ctx, "", 0, "--set value is too long");
  size_t i = 0;
  for (;;) {
    while (i < len && is_blank(text[i])) i++;
    size_t name0 = i;
    if (i >= len || !is_name_start(text[i]))
      return cmdline_error(ctx, text, i, "expected NAME=VALUE (e.g. "
                           "--set layers=2,dim=64)");
    while (i < len && is_name_char(text[i])) i++;
    size_t name1 = i;
    while (i < len && is_blank(text[i])) i++;
    if (i >= len || text[i] != '=')
      return cmdline_error(ctx, text, i, "expected '=' after the constant's "
                           "name (NAME=VALUE)");
    i++;
    while (i < len && is_blank(text[i])) i++;
    size_t val0 = i;
    while (i < len && text[i] != ',') i++;
    size_t val1 = i;
    while (val1 > val0 && is_blank(text[val1 - 1])) val1--;
    if (val1 == val0)
      return cmdline_error(ctx, text, val0, "expected a value after '='");
    if (name1 - name0 > PTG_MAX_NAME)
      return cmdline_error(ctx, text, name0, "constant name is too long");
    *out = ptc_xrealloc(*out, (size_t)(*n + 1) * sizeof **out);
    ptc_define *d = &(*out)[(*n)++];
    d->name = ptc_intern(ctx, text + name0, name1 - name0);
    d->value = ptc_intern(ctx, text + val0, val1 - val0);
    d->text = text;
    d->off = (int32_t)name0;
    if (i >= len) return 0;
    i++; /* ',' */
  }
}
