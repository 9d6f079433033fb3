/* A store on a RAM bdev, driven from C by path: make a directory and a file, write and read
 * it, stat and list, snapshot, rename, clone, diff; refusals come back as negative errno
 * values; after unload and load again, everything written is there. Runs on the main thread
 * (not a reactor): every store call waits for the store's owner reactor. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <tandem.h>

#define CHECK(expr, want)                                                                    \
    do {                                                                                     \
        int rc_ = (expr);                                                                    \
        if (rc_ != (want)) {                                                                 \
            fprintf(stderr, "store_files: %s = %d (%s), expected %d\n", #expr, rc_,          \
                    tandem_strerror(rc_), (want));                                           \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

struct names { char seen[8][64]; int n; };

static int on_entry(void *arg, const char *name, uint64_t ino, tandem_file_type type)
{
    struct names *ns = arg;
    (void)ino;
    if (ns->n < 8) snprintf(ns->seen[ns->n++], 64, "%s%s", name, type == TANDEM_FILE_DIR ? "/" : "");
    return 0;
}

static int on_line(void *arg, const char *line)
{
    return on_entry(arg, line, 0, TANDEM_FILE_REGULAR);
}

int main(void)
{
    tandem_env_opts opts;
    tandem_env_opts_init(&opts, sizeof(opts));
    opts.core_mask = "[0]";
    CHECK(tandem_env_start(&opts), 0);
    tandem_bdev_opts bopts;
    tandem_bdev_opts_init(&bopts, sizeof(bopts));
    bopts.name = "Malloc0";
    bopts.block_size = 4096;
    bopts.num_blocks = 8192;
    CHECK(tandem_bdev_malloc_create(&bopts), 0);

    tandem_store *st = NULL;
    CHECK(tandem_store_create("Malloc0", "lvs0", 4096, &st), 0);
    CHECK(tandem_store_mkdir(st, "/vms", 0755), 0);
    CHECK(tandem_store_create_file(st, "/vms/disk0", 0640), 0);
    const char msg[] = "written from C";
    CHECK(tandem_store_write(st, "/vms/disk0", 10000, msg, sizeof msg), 0);
    char buf[64] = {0};
    size_t got = 0;
    CHECK(tandem_store_read(st, NULL, "/vms/disk0", 10000, buf, sizeof buf, &got), 0);
    if (got != sizeof msg || memcmp(buf, msg, sizeof msg) != 0) {
        fprintf(stderr, "store_files: read %zu bytes: %s\n", got, buf);
        return 1;
    }
    tandem_stat s;
    CHECK(tandem_store_stat(st, "/vms/disk0", &s), 0);
    if (s.size != 10000 + sizeof msg || s.mode != 0640 || s.type_ != TANDEM_FILE_REGULAR || s.nlink != 1) {
        fprintf(stderr, "store_files: stat size %llu mode %o\n", (unsigned long long)s.size, s.mode);
        return 1;
    }
    struct names ls = {0};
    CHECK(tandem_store_readdir(st, "/", on_entry, &ls), 0);
    if (ls.n != 1 || strcmp(ls.seen[0], "vms/") != 0) {
        fprintf(stderr, "store_files: / lists %d entries\n", ls.n);
        return 1;
    }

    CHECK(tandem_store_snapshot(st, "s1"), 0);
    CHECK(tandem_store_rename(st, "/vms/disk0", "/vms/disk1"), 0);
    CHECK(tandem_store_clone_file(st, "/vms/disk1", "/vms/disk2"), 0);
    CHECK(tandem_store_truncate(st, "/vms/disk2", 4), 0);
    struct names diff = {0};
    CHECK(tandem_store_diff(st, "s1", NULL, "/vms", on_line, &diff), 0);
    if (diff.n != 2 || strcmp(diff.seen[0], "R disk0 -> disk1") != 0 || strcmp(diff.seen[1], "+ disk2") != 0) {
        fprintf(stderr, "store_files: diff has %d lines, first %s\n", diff.n, diff.seen[0]);
        return 1;
    }
    CHECK(tandem_store_read(st, "s1", "/vms/disk0", 10000, buf, sizeof buf, &got), 0);

    /* Refusals: the errno POSIX gives, and nothing changes. */
    CHECK(tandem_store_mkdir(st, "/vms", 0755), -EEXIST);
    CHECK(tandem_store_unlink(st, "/vms"), -EISDIR);
    CHECK(tandem_store_rmdir(st, "/vms"), -ENOTEMPTY);
    CHECK(tandem_store_stat(st, "/nowhere", &s), -ENOENT);
    CHECK(tandem_store_create_file(st, "/vms/disk1/x", 0644), -ENOTDIR);
    CHECK(tandem_store_mkdir(st, NULL, 0755), -EINVAL);
    CHECK(tandem_store_read(st, NULL, "/vms/disk1", 0, NULL, 8, &got), -EINVAL);
    CHECK(tandem_store_stat(NULL, "/vms", &s), -EINVAL);

    /* Unload and load again: all of it is on the bdev. */
    CHECK(tandem_store_unload(st), 0);
    CHECK(tandem_store_stat(st, "/vms", &s), -EBADF);
    CHECK(tandem_store_load("Malloc0", &st), 0);
    CHECK(tandem_store_read(st, NULL, "/vms/disk1", 10000, buf, sizeof buf, &got), 0);
    if (got != sizeof msg || memcmp(buf, msg, sizeof msg) != 0) return 1;
    CHECK(tandem_store_stat(st, "/vms/disk2", &s), 0);
    if (s.size != 4) return 1;
    CHECK(tandem_store_unload(st), 0);
    CHECK(tandem_bdev_delete("Malloc0"), 0);
    CHECK(tandem_env_stop(), 0);
    printf("store_files: PASS\n");
    return 0;
}
