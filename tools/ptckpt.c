/* ptckpt.c -- inspects, verifies and converts ptrun's checkpoints.
 *
 *   ptckpt list PATH                      what a checkpoint holds (or, for a
 *                                         directory of them, which there are)
 *   ptckpt verify PATH                    every shard's size and SHA-256
 *   ptckpt export PATH OUT.safetensors [--state]
 *                                         the whole tensors, one file
 *   ptckpt import IN.safetensors DIR --like PLAN [--seed S]
 *                                         DIR/step-0 from weights
 *
 * Tensors keep their dtypes (F32, BF16, F16) bit for bit both ways; on
 * import, variables initialised as copies of others (init copy(@p)) are
 * made again from the imported values.
 *
 * PATH is a checkpoint (a step-N directory) or a directory of them (then its
 * newest, or for list and verify, all).  The tool owns the command line and
 * the exit status: 0 success, 1 a bad checkpoint or file, 2 a malformed
 * command line.  Everything else is runtime/ckpt.h; docs/checkpoints.md
 * states the format.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ptc_config.h"
#include "runtime/ckpt.h"
#include "runtime/ptrt.h"

enum { EXIT_BAD = 1, EXIT_USAGE = 2 };

static void print_usage(FILE *f) {
  fprintf(f, "usage: ptckpt list PATH\n"
             "       ptckpt verify PATH\n"
             "       ptckpt export PATH OUT.safetensors [--state]\n"
             "       ptckpt import IN.safetensors DIR --like PLAN [--seed S]\n"
             "\n"
             "Inspects, verifies and converts the checkpoints ptrun --ckpt-dir writes.\n"
             "PATH is a checkpoint (a step-N directory) or a directory of them: its\n"
             "newest, or every one for list and verify.\n"
             "\n"
             "  list     the step, settings, shard files and every tensor's blocks\n"
             "  verify   every shard file's size and SHA-256 against the manifest\n"
             "  export   the parameters as whole tensors in one safetensors file\n"
             "           (--state: the optimizer's state too), for PyTorch and\n"
             "           Hugging Face tools\n"
             "  import   a starting checkpoint DIR/step-0 for the model of PLAN: its\n"
             "           parameters from IN, its optimizer state from the plan's init\n"
             "           (--seed as ptrun's, default 1337); ptrun --resume DIR/step-0\n"
             "           trains on from it, on any mesh\n"
             "\n"
             "Exit status: 0 success, 1 a bad checkpoint or file, 2 a malformed command "
             "line.\n");
}

static int usage(const char *msg) {
  fprintf(stderr, "ptckpt: error: %s; see 'ptckpt --help'\n", msg);
  return EXIT_USAGE;
}

static void dims_text(char *out, size_t cap, int32_t rank, const int64_t *d) {
  size_t k = (size_t)snprintf(out, cap, "[");
  for (int32_t i = 0; i < rank && k < cap; i++)
    k += (size_t)snprintf(out + k, cap - k, i ? ",%lld" : "%lld", (long long)d[i]);
  if (k < cap) snprintf(out + k, cap - k, "]");
}

static const char *dtype_text(ptc_dtype t) {
  switch (t) {
  case PTC_DTYPE_F32: return "F32";
  case PTC_DTYPE_F64: return "F64";
  case PTC_DTYPE_F16: return "F16";
  case PTC_DTYPE_BF16: return "BF16";
  case PTC_DTYPE_I64: return "I64";
  case PTC_DTYPE_I32: return "I32";
  case PTC_DTYPE_I8: return "I8";
  default: return "BOOL";
  }
}

static bool is_checkpoint(const char *path) {
  size_t n = strlen(path) + 16;
  char *m = ptc_xmalloc(n);
  snprintf(m, n, "%s/manifest.json", path);
  struct stat st;
  bool ok = stat(m, &st) == 0;
  free(m);
  return ok;
}

static int cmp_step(const void *a, const void *b) {
  const char *x = *(char *const *)a, *y = *(char *const *)b;
  long long u = strtoll(x + 5, NULL, 10), v = strtoll(y + 5, NULL, 10);
  return u < v ? -1 : u > v;
}

/* The complete checkpoints of a directory, by step (heap names), and
 * the count of incomplete ones left by interrupted writers. */
static char **list_dir(const char *dir, int32_t *n, int32_t *stale) {
  *n = *stale = 0;
  DIR *d = opendir(dir);
  if (!d) return NULL;
  char **names = NULL;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strncmp(e->d_name, ".tmp-step-", 10) || !strncmp(e->d_name, ".old-step-", 10)) {
      (*stale)++;
      continue;
    }
    if (strncmp(e->d_name, "step-", 5) || !e->d_name[5] ||
        strspn(e->d_name + 5, "0123456789") != strlen(e->d_name + 5))
      continue;
    size_t len = strlen(dir) + strlen(e->d_name) + 2;
    char *p = ptc_xmalloc(len);
    snprintf(p, len, "%s/%s", dir, e->d_name);
    bool ok = is_checkpoint(p);
    free(p);
    if (!ok) {
      (*stale)++;
      continue;
    }
    names = ptc_xrealloc(names, (size_t)(*n + 1) * sizeof *names);
    names[(*n)++] = strdup(e->d_name);
  }
  closedir(d);
  if (*n) qsort(names, (size_t)*n, sizeof *names, cmp_step);
  return names;
}

static void print_manifest_head(const ptrt_ckpt *ck) {
  const json_t *r = ptrt_ckpt_manifest(ck);
  const json_t *on = json_object_get(r, "written_on");
  printf("checkpoint %s: step %lld of %s, written by %s on %s (%lld rank%s)\n",
         ptrt_ckpt_path(ck), (long long)ptrt_ckpt_step(ck),
         json_string_value(json_object_get(r, "model")),
         json_string_value(json_object_get(r, "written_by")),
         json_string_value(json_object_get(on, "mesh")),
         (long long)json_integer_value(json_object_get(on, "ranks")),
         json_integer_value(json_object_get(on, "ranks")) == 1 ? "" : "s");
  printf("fingerprint %s\n", ptrt_ckpt_fingerprint(ck));
  const json_t *t = json_object_get(r, "training");
  if (json_is_object(t)) {
    char *s = json_dumps(t, JSON_COMPACT | JSON_REAL_PRECISION(9));
    printf("training %s\n", s ? s : "?");
    free(s);
  } else {
    printf("training: not recorded (an imported checkpoint: any settings may resume it)\n");
  }
  const json_t *o = json_object_get(r, "optimizer");
  printf("gradient clipping %g\n", json_number_value(json_object_get(o, "clip")));
}

static int do_list_one(ptc_ctx *ctx, const char *path) {
  ptrt_ckpt *ck = ptrt_ckpt_open(ctx, path);
  if (!ck) return EXIT_BAD;
  print_manifest_head(ck);
  int64_t total = 0;
  for (int32_t i = 0; i < ptrt_ckpt_file_count(ck); i++) total += ptrt_ckpt_file_at(ck, i)->bytes;
  char hb[32];
  ptc_bytes_text(hb, sizeof hb, (double)total);
  printf("%d shard file%s, %s:\n", ptrt_ckpt_file_count(ck),
         ptrt_ckpt_file_count(ck) == 1 ? "" : "s", hb);
  for (int32_t i = 0; i < ptrt_ckpt_file_count(ck); i++) {
    const ptrt_ckpt_file *f = ptrt_ckpt_file_at(ck, i);
    printf("  %-16s %12lld bytes  sha256 %s\n", f->name, (long long)f->bytes, f->sha256);
  }
  printf("%d tensors:\n", ptrt_ckpt_tensor_count(ck));
  for (int32_t i = 0; i < ptrt_ckpt_tensor_count(ck); i++) {
    const ptrt_ckpt_tensor *t = ptrt_ckpt_tensor_at(ck, i);
    char d[128];
    dims_text(d, sizeof d, t->rank, t->dims);
    printf("  %-24s %-9s %s%s  %d block%s\n", t->name, t->trainable ? "parameter" : "state",
           dtype_text(t->dtype), d, t->nblocks, t->nblocks == 1 ? "" : "s");
    for (int32_t b = 0; b < t->nblocks; b++) {
      const ptrt_ckpt_block *x = &t->blocks[b];
      char o[128], s[128];
      dims_text(o, sizeof o, t->rank, x->origin);
      dims_text(s, sizeof s, t->rank, x->dims);
      printf("    %s bytes [%lld, %lld)  origin %s dims %s\n",
             ptrt_ckpt_file_at(ck, x->file)->name, (long long)x->offset,
             (long long)(x->offset + x->bytes), o, s);
    }
  }
  ptrt_ckpt_close(ck);
  return 0;
}

static int do_list(ptc_ctx *ctx, const char *path) {
  if (is_checkpoint(path)) return do_list_one(ctx, path);
  int32_t n, stale;
  char **names = list_dir(path, &n, &stale);
  if (!names && !stale) {
    struct stat st;
    if (stat(path, &st) != 0) {
      fprintf(stderr, "%s: error: %s\n", path, strerror(errno));
      return EXIT_BAD;
    }
  }
  printf("%s: %d complete checkpoint%s\n", path, n, n == 1 ? "" : "s");
  int rc = 0;
  for (int32_t i = 0; i < n; i++) {
    size_t len = strlen(path) + strlen(names[i]) + 2;
    char *p = ptc_xmalloc(len);
    snprintf(p, len, "%s/%s", path, names[i]);
    ptrt_ckpt *ck = ptrt_ckpt_open(ctx, p);
    if (ck) {
      int64_t total = 0;
      for (int32_t k = 0; k < ptrt_ckpt_file_count(ck); k++)
        total += ptrt_ckpt_file_at(ck, k)->bytes;
      char hb[32];
      ptc_bytes_text(hb, sizeof hb, (double)total);
      const json_t *on = json_object_get(ptrt_ckpt_manifest(ck), "written_on");
      printf("  %-14s step %-8lld %3d shard file%s %10s  written on %s\n", names[i],
             (long long)ptrt_ckpt_step(ck), ptrt_ckpt_file_count(ck),
             ptrt_ckpt_file_count(ck) == 1 ? " " : "s", hb,
             json_string_value(json_object_get(on, "mesh")));
      ptrt_ckpt_close(ck);
    } else {
      rc = EXIT_BAD;
    }
    free(p);
    free(names[i]);
  }
  free(names);
  if (stale)
    printf("  (%d incomplete: left by an interrupted write, ignored; ptrun removes them when "
           "it next starts with this --ckpt-dir)\n", stale);
  return rc;
}

static int verify_one(ptc_ctx *ctx, const char *path) {
  ptrt_ckpt *ck = ptrt_ckpt_open(ctx, path);
  if (!ck) return EXIT_BAD;
  int rc = ptrt_ckpt_verify(ctx, ck, NULL);
  if (rc == 0)
    printf("%s: step %lld, %d shard file%s, %d tensors: every size and SHA-256 matches\n",
           path, (long long)ptrt_ckpt_step(ck), ptrt_ckpt_file_count(ck),
           ptrt_ckpt_file_count(ck) == 1 ? "" : "s", ptrt_ckpt_tensor_count(ck));
  ptrt_ckpt_close(ck);
  return rc == 0 ? 0 : EXIT_BAD;
}

static int do_verify(ptc_ctx *ctx, const char *path) {
  if (is_checkpoint(path)) return verify_one(ctx, path);
  int32_t n, stale;
  char **names = list_dir(path, &n, &stale);
  if (!n) {
    fprintf(stderr, "%s: error: no complete checkpoint here (a step-N directory with a "
                    "manifest.json)\n", path);
    free(names);
    return EXIT_BAD;
  }
  int rc = 0;
  for (int32_t i = 0; i < n; i++) {
    size_t len = strlen(path) + strlen(names[i]) + 2;
    char *p = ptc_xmalloc(len);
    snprintf(p, len, "%s/%s", path, names[i]);
    if (verify_one(ctx, p) != 0) rc = EXIT_BAD;
    free(p);
    free(names[i]);
  }
  free(names);
  return rc;
}

static int do_export(ptc_ctx *ctx, const char *path, const char *out, bool state) {
  char *p = ptrt_ckpt_resolve(ctx, path);
  if (!p) return EXIT_BAD;
  ptrt_ckpt *ck = ptrt_ckpt_open(ctx, p);
  free(p);
  if (!ck) return EXIT_BAD;
  if (ptrt_ckpt_verify(ctx, ck, NULL) != 0) {
    ptrt_ckpt_close(ck);
    return EXIT_BAD;
  }
  int32_t n = ptrt_ckpt_tensor_count(ck);
  ptrt_st_entry *e = ptc_xcalloc((size_t)n + 1, sizeof *e);
  void **bufs = ptc_xcalloc((size_t)n + 1, sizeof *bufs);
  int32_t ne = 0;
  int rc = 0;
  int64_t zero[PTC_MAX_RANK] = {0};
  for (int32_t i = 0; i < n && rc == 0; i++) {
    const ptrt_ckpt_tensor *t = ptrt_ckpt_tensor_at(ck, i);
    if (!t->trainable && !state) continue;
    int64_t numel = 1;
    for (int32_t d = 0; d < t->rank; d++) numel *= t->dims[d];
    bufs[ne] = ptc_xmalloc((size_t)(numel * ptc_dtype_size(t->dtype)) + 1);
    if (ptrt_ckpt_read_box(ctx, ck, t, zero, t->dims, bufs[ne]) != 0) rc = EXIT_BAD;
    e[ne] = (ptrt_st_entry){t->name, t->dtype, t->rank, t->dims, bufs[ne]};
    ne++;
  }
  if (rc == 0 && ptrt_st_write(ctx, out, e, ne) != 0) rc = EXIT_BAD;
  if (rc == 0)
    printf("ptckpt: wrote %d tensors of %s (step %lld) to %s\n", ne, ptrt_ckpt_path(ck),
           (long long)ptrt_ckpt_step(ck), out);
  for (int32_t i = 0; i < ne; i++) free(bufs[i]);
  free(bufs);
  free(e);
  ptrt_ckpt_close(ck);
  return rc;
}

static int do_import(ptc_ctx *ctx, const char *in, const char *dir, const char *like,
                     uint64_t seed) {
  ptrt_plan *plan = ptrt_plan_open(ctx, like);
  if (!plan) return EXIT_BAD;
  int rc = EXIT_BAD;
  /* whole tensors of the model as written, whatever mesh the plan is for */
  ptrt_vars *v = ptrt_vars_create(ctx, plan->mod, NULL);
  if (v) {
    ptrt_vars_init(v, seed, NULL);
    char by[64];
    snprintf(by, sizeof by, "ptckpt %s import", PTC_VERSION_STRING);
    ptrt_ckpt_write w = {.dir = dir, .step = 0, .global = plan->mod, .model = plan->model,
                         .settings = NULL, .written_by = by, .mesh = "one device"};
    /* copies of the loaded params (init copy(@p): 16-bit working copies)
     * follow them */
    int loaded = ptrt_load_weights(ctx, in, v);
    if (loaded == 0) ptrt_vars_refresh_copies(v, seed, NULL);
    if (loaded == 0 && ptrt_ckpt_save(ctx, &w, NULL, v, NULL) == 0) {
      printf("ptckpt: wrote %s/step-0 from %s for the model of %s\n", dir, in, like);
      rc = 0;
    }
  }
  ptrt_vars_destroy(v);
  ptrt_plan_close(plan);
  return rc;
}

int main(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    print_usage(stdout);
    return 0;
  }
  if (argc >= 2 && !strcmp(argv[1], "--version")) {
    printf("ptckpt %s (checkpoint format %s version %d)\n", PTC_VERSION_STRING,
           PTRT_CKPT_FORMAT, PTRT_CKPT_VERSION);
    return 0;
  }
  if (argc < 2) return usage("no command given (list, verify, export, import)");
  const char *cmd = argv[1];
  /* the words after the command, and the options */
  const char *pos[3] = {NULL, NULL, NULL};
  int npos = 0;
  bool state = false;
  const char *like = NULL;
  uint64_t seed = 1337;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--state")) {
      state = true;
    } else if (!strcmp(a, "--like") || !strcmp(a, "--seed")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "ptckpt: error: %s needs a value; see 'ptckpt --help'\n", a);
        return EXIT_USAGE;
      }
      if (!strcmp(a, "--like")) {
        like = argv[++i];
      } else {
        char *end;
        long long s = strtoll(argv[++i], &end, 10);
        if (!*argv[i] || *end || s < 0) return usage("--seed takes a non-negative integer");
        seed = (uint64_t)s;
      }
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "ptckpt: error: unknown option '%s'; see 'ptckpt --help'\n", a);
      return EXIT_USAGE;
    } else if (npos < 3) {
      pos[npos++] = a;
    } else {
      return usage("too many arguments");
    }
  }
  bool list = !strcmp(cmd, "list"), verify = !strcmp(cmd, "verify"),
       exp = !strcmp(cmd, "export"), imp = !strcmp(cmd, "import");
  if (!list && !verify && !exp && !imp) {
    fprintf(stderr, "ptckpt: error: unknown command '%s' (list, verify, export, import); "
                    "see 'ptckpt --help'\n", cmd);
    return EXIT_USAGE;
  }
  int want = list || verify ? 1 : 2;
  if (npos != want)
    return usage(list || verify ? "give one PATH (a checkpoint or a directory of them)"
                 : exp ? "export takes PATH and OUT.safetensors"
                       : "import takes IN.safetensors and DIR");
  if (state && !exp) return usage("--state goes with export");
  if ((like || seed != 1337) && !imp) return usage("--like and --seed go with import");
  if (imp && !like) return usage("import needs --like PLAN: the plan of the model to import into");
  ptc_ctx *ctx = ptc_ctx_create();
  int rc = list     ? do_list(ctx, pos[0])
           : verify ? do_verify(ctx, pos[0])
           : exp    ? do_export(ctx, pos[0], pos[1], state)
                    : do_import(ctx, pos[0], pos[1], like, seed);
  if (rc == 0 && ptc_ctx_error_count(ctx)) rc = EXIT_BAD;
  ptc_ctx_destroy(ctx);
  return rc;
}
