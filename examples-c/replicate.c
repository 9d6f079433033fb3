/* Synchronous replication from C, in one process: two stores on two RAM bdevs, a volume in
 * each, and a relationship from the first to the second (the secondary's store is in this
 * process, so no RPC socket). A state callback prints every transition; the program writes
 * the primary while the pair establishes, waits for in_sync, writes again (each write now
 * lands on both sides before it completes), reads both volumes back and compares them, then
 * quiesces, deletes the relationship and checks the C boundary's refusals. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <tandem.h>

#define VOL_BYTES (8u << 20)
#define BS 4096u
#define CHUNK (256u * 1024u)

static atomic_int transitions;
static atomic_int reached_in_sync;

static void on_state(void *arg, const char *name, tandem_repl_state from, tandem_repl_state to)
{
    (void)arg;
    printf("replicate: %s: %s -> %s\n", name, tandem_repl_state_name(from),
           tandem_repl_state_name(to));
    atomic_fetch_add(&transitions, 1);
    if (to == TANDEM_REPL_IN_SYNC) atomic_store(&reached_in_sync, 1);
}

/* One I/O on a bdev, run on reactor 0 and waited for. */
struct io {
    const char *bdev;
    int write;
    void *buf;
    uint64_t lba, blocks;
    tandem_desc *desc;
    tandem_channel *ch;
    int status;
    atomic_int done;
};

static void io_done(void *arg, int status)
{
    struct io *o = arg;
    o->status = status;
    tandem_channel_put(o->ch);
    tandem_desc_close(o->desc);
    atomic_store(&o->done, 1);
}

static void io_start(void *arg)
{
    struct io *o = arg;
    int rc = tandem_bdev_open(o->bdev, o->write, NULL, NULL, &o->desc);
    if (rc == 0) rc = tandem_desc_get_channel(o->desc, &o->ch);
    if (rc == 0) {
        rc = o->write ? tandem_write(o->ch, o->buf, o->lba, o->blocks, io_done, o)
                      : tandem_read(o->ch, o->buf, o->lba, o->blocks, io_done, o);
        if (rc != 0) { tandem_channel_put(o->ch); tandem_desc_close(o->desc); }
    } else if (o->desc) {
        tandem_desc_close(o->desc);
    }
    if (rc != 0) { o->status = rc; atomic_store(&o->done, 1); }
}

static int run_io(const char *bdev, int write, void *buf, uint64_t off, uint64_t len)
{
    struct io o = {.bdev = bdev, .write = write, .buf = buf, .lba = off / BS, .blocks = len / BS};
    if (tandem_send_msg(0, io_start, &o) != 0) return -1;
    for (int i = 0; !atomic_load(&o.done) && i < 20000; i++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return atomic_load(&o.done) ? o.status : -1;
}

static int wait_state(tandem_repl *r, tandem_repl_state want, int ms)
{
    tandem_repl_status st;
    for (int i = 0; i < ms; i++) {
        if (tandem_repl_get_status(r, &st) == 0 && st.state == want) return 0;
        struct timespec t = {0, 1000000};
        nanosleep(&t, NULL);
    }
    return -1;
}

#define CHECK(what, rc) do { int rc_ = (rc); if (rc_ != 0) { \
    fprintf(stderr, "replicate: %s: %s\n", what, tandem_strerror(rc_)); return 1; } } while (0)

int main(void)
{
    tandem_env_opts eo;
    tandem_env_opts_init(&eo, sizeof(eo));
    eo.core_mask = "[0]";
    CHECK("env_start", tandem_env_start(&eo));

    tandem_store *stores[2];
    const char *bases[2] = {"MallocP", "MallocS"}, *names[2] = {"lvsP", "lvsS"};
    for (int i = 0; i < 2; i++) {
        tandem_bdev_opts bo;
        tandem_bdev_opts_init(&bo, sizeof(bo));
        bo.name = bases[i];
        bo.block_size = BS;
        bo.num_blocks = 3 * VOL_BYTES / BS;
        CHECK("malloc_create", tandem_bdev_malloc_create(&bo));
        CHECK("store_create", tandem_store_create(bases[i], names[i], 65536, &stores[i]));
        CHECK("create_volume", tandem_store_create_volume(stores[i], "/disk0", VOL_BYTES, false));
    }

    unsigned char *a, *b;
    if (tandem_dma_alloc(CHUNK, (void **)&a) || tandem_dma_alloc(CHUNK, (void **)&b)) return 1;
    for (uint64_t off = 0; off < VOL_BYTES / 2; off += CHUNK) {
        for (unsigned i = 0; i < CHUNK; i++) a[i] = (unsigned char)(off / CHUNK * 31 + i);
        CHECK("fill", run_io("lvsP/disk0", 1, a, off, CHUNK));
    }

    tandem_repl_opts ro;
    tandem_repl_opts_init(&ro, sizeof(ro));
    ro.name = "vm1";
    ro.primary = "lvsP/disk0";
    ro.secondary_bdev = "lvsS/disk0";
    ro.secondary_volume = "lvsS/disk0";
    ro.policy = TANDEM_REPL_SYNC;
    tandem_repl *r;
    CHECK("repl_create", tandem_repl_create(&ro, &r));
    uint64_t watch_id;
    CHECK("repl_watch", tandem_repl_watch(r, on_state, NULL, &watch_id));
    CHECK("repl_start", tandem_repl_start(r));
    /* Writes while the pair establishes. */
    for (int k = 0; k < 16; k++) {
        memset(a, 0x40 + k, CHUNK);
        CHECK("write while establishing", run_io("lvsP/disk0", 1, a, (uint64_t)k * 3 * CHUNK % VOL_BYTES, CHUNK));
    }
    CHECK("wait in_sync", wait_state(r, TANDEM_REPL_IN_SYNC, 20000));
    memset(a, 0x7e, CHUNK);
    CHECK("write in sync", run_io("lvsP/disk0", 1, a, VOL_BYTES - CHUNK, CHUNK));

    for (uint64_t off = 0; off < VOL_BYTES; off += CHUNK) {
        CHECK("read primary", run_io("lvsP/disk0", 0, a, off, CHUNK));
        CHECK("read secondary", run_io("lvsS/disk0", 0, b, off, CHUNK));
        if (memcmp(a, b, CHUNK) != 0) {
            fprintf(stderr, "replicate: the volumes differ in [%llu, +%u)\n", (unsigned long long)off, CHUNK);
            return 1;
        }
    }
    tandem_repl_status st;
    CHECK("status", tandem_repl_get_status(r, &st));
    printf("replicate: in sync; %llu bytes transferred, %llu split writes, progress %.0f%%\n",
           (unsigned long long)st.bytes_transferred, (unsigned long long)st.split_writes,
           st.progress_percent);
    CHECK("quiesce", tandem_repl_quiesce(r));

    /* The boundary's refusals: a state that does not allow it, bad options, a stale handle. */
    int bad = 0;
    if (tandem_repl_quiesce(r) != -EPERM) bad |= 1;
    tandem_repl_opts ro2 = ro;
    ro2.policy = 42;
    tandem_repl *r2 = NULL;
    if (tandem_repl_create(&ro2, &r2) != -EINVAL || r2 != NULL) bad |= 2;
    ro2 = ro;
    ro2.name = "vm2";
    if (tandem_repl_create(&ro2, &r2) != -EEXIST) bad |= 4; /* the primary has a relationship */
    if (tandem_repl_state_name(99) != NULL) bad |= 8;
    CHECK("unwatch", tandem_repl_unwatch(r, watch_id));
    CHECK("repl_delete", tandem_repl_delete(r));
    if (tandem_repl_start(r) != -EBADF) bad |= 16;
    if (tandem_repl_get_status(NULL, &st) != -EINVAL) bad |= 32;

    tandem_dma_free(a);
    tandem_dma_free(b);
    for (int i = 0; i < 2; i++) CHECK("store_unload", tandem_store_unload(stores[i]));
    CHECK("env_stop", tandem_env_stop());
    if (bad || !atomic_load(&reached_in_sync) || atomic_load(&transitions) < 4) {
        printf("replicate: FAIL (refusals %#x, %d transitions)\n", bad, atomic_load(&transitions));
        return 1;
    }
    printf("replicate: PASS\n");
    return 0;
}
