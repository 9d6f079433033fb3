/* Embedding as firmware with its own main loop: the engine spawns no thread; this program's
 * loop drives tandem_thread_poll. A message starts vectored I/O on the thread, a poller counts
 * loops, a timer fires, and the loop ends when all three are seen. */
#include <stdio.h>
#include <string.h>
#include <tandem.h>

#define BLOCK_SIZE 4096

struct state {
    tandem_desc *desc;
    tandem_channel *ch;
    unsigned char *a, *b, *c, *d;
    int io_status, io_done, timer_fired, poller_calls, cancelled_fired;
    tandem_poller *poller;
};

static int count_loops(void *arg)
{
    struct state *s = arg;
    s->poller_calls++;
    return 0;
}

static void timer_fired(void *arg) { ((struct state *)arg)->timer_fired = 1; }
static void must_not_fire(void *arg) { ((struct state *)arg)->cancelled_fired = 1; }

static void readv_done(void *arg, int status)
{
    struct state *s = arg;
    s->io_status = status;
    /* Written as a (3 blocks) + b (1); read as c (1) + d (3). */
    if (status == 0 && (memcmp(s->c, s->a, BLOCK_SIZE) || memcmp(s->d, s->a + BLOCK_SIZE, 2 * BLOCK_SIZE) ||
                        memcmp(s->d + 2 * BLOCK_SIZE, s->b, BLOCK_SIZE)))
        s->io_status = -1;
    s->io_done = 1;
}

static void writev_done(void *arg, int status)
{
    struct state *s = arg;
    if (status != 0) { s->io_status = status; s->io_done = 1; return; }
    /* Read back split the other way: 1 + 3 blocks. */
    struct iovec iov[2] = {{s->c, BLOCK_SIZE}, {s->d, 3 * BLOCK_SIZE}};
    int rc = tandem_readv(s->ch, iov, 2, 100, 4, readv_done, s);
    if (rc != 0) { s->io_status = rc; s->io_done = 1; }
}

/* Runs inside tandem_thread_poll, on this program's own thread. */
static void setup(void *arg)
{
    struct state *s = arg;
    uint64_t timer, doomed;
    int rc = tandem_bdev_open("Malloc1", true, NULL, NULL, &s->desc);
    if (rc == 0) rc = tandem_desc_get_channel(s->desc, &s->ch);
    if (rc == 0) rc = tandem_poller_register(count_loops, s, 0, &s->poller);
    if (rc == 0) rc = tandem_timer_set(1000, timer_fired, s, &timer);
    if (rc == 0) rc = tandem_timer_set(1000, must_not_fire, s, &doomed);
    if (rc == 0) rc = tandem_timer_cancel(doomed);
    struct iovec iov[2] = {{s->a, 3 * BLOCK_SIZE}, {s->b, BLOCK_SIZE}};
    if (rc == 0) rc = tandem_writev(s->ch, iov, 2, 100, 4, writev_done, s);
    if (rc != 0) { s->io_status = rc; s->io_done = 1; }
}

/* Teardown also runs on the thread: a channel belongs to the thread that got it. */
static void teardown(void *arg)
{
    struct state *s = arg;
    int rc = tandem_poller_unregister(s->poller);
    if (rc == 0) rc = tandem_channel_put(s->ch);
    if (rc == 0) rc = tandem_desc_close(s->desc);
    s->io_status = rc;
    s->io_done = 2;
}

int main(void)
{
    struct state s = {0};
    tandem_env_opts opts;
    tandem_env_opts_init(&opts, sizeof(opts)); /* core_mask NULL: no engine threads */
    if (tandem_env_start(&opts) != 0 || tandem_env_reactor_count() != 0) return 1;

    tandem_bdev_opts bopts;
    tandem_bdev_opts_init(&bopts, sizeof(bopts));
    bopts.name = "Malloc1";
    bopts.block_size = BLOCK_SIZE;
    bopts.num_blocks = 1024;
    if (tandem_bdev_malloc_create(&bopts) != 0) return 1;

    void *p[4];
    for (int i = 0; i < 4; i++)
        if (tandem_dma_alloc(3 * BLOCK_SIZE, &p[i]) != 0) return 1;
    s.a = p[0]; s.b = p[1]; s.c = p[2]; s.d = p[3];
    for (int i = 0; i < 3 * BLOCK_SIZE; i++) s.a[i] = (unsigned char)(i * 13 + 1);
    memset(s.b, 0x5A, BLOCK_SIZE);
    memset(s.c, 0xEE, 3 * BLOCK_SIZE); memset(s.d, 0xEE, BLOCK_SIZE);

    tandem_thread *t;
    uint32_t id;
    if (tandem_thread_create("firmware_main", &t) != 0 || tandem_thread_id(t, &id) != 0) return 1;
    if (tandem_send_msg(id, setup, &s) != 0) return 1;

    /* The firmware's own loop: bounded in iterations. */
    long loops = 0;
    while (!(s.io_done && s.timer_fired && s.poller_calls > 10) && loops < 50000000) {
        if (tandem_thread_poll(t) < 0) return 1;
        loops++;
    }
    int ok = s.io_done && s.io_status == 0 && s.timer_fired && !s.cancelled_fired && s.poller_calls > 10;
    printf("embed_poll: %ld loops, poller ran %d times, timer %s, I/O status %d\n", loops,
           s.poller_calls, s.timer_fired ? "fired" : "did not fire", s.io_status);

    /* Tear down on the engine thread, then destroy it from its own (this) OS thread. */
    int rc = tandem_send_msg(id, teardown, &s);
    for (int i = 0; i < 1000 && s.io_done != 2; i++) tandem_thread_poll(t);
    rc |= s.io_done == 2 ? s.io_status : -1;
    rc |= tandem_thread_destroy(t);
    for (int i = 0; i < 4; i++) rc |= tandem_dma_free(p[i]);
    rc |= tandem_bdev_delete("Malloc1");
    rc |= tandem_env_stop();
    if (!ok || rc != 0) { printf("embed_poll: FAIL\n"); return 1; }
    printf("embed_poll: PASS\n");
    return 0;
}
