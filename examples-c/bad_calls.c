/* Every misuse returns its documented error and nothing crashes: NULL and stale handles, a
 * wrong opts_size, a call from the wrong thread, bad I/O arguments, a double free. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <tandem.h>

static int failures;

#define EXPECT(call, want)                                                                   \
    do {                                                                                     \
        int got_ = (call);                                                                   \
        if (got_ != (want)) {                                                                \
            printf("FAIL %s:%d: %s = %d (%s), want %d\n", __FILE__, __LINE__, #call, got_,   \
                   tandem_strerror(got_), (want));                                           \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

static tandem_thread *thread;
static tandem_desc *desc;
static tandem_channel *channel;
static void *buf;

static void never(void *arg, int status) { (void)arg; (void)status; failures += 1000; }
static int idle_poller(void *arg) { (void)arg; return 0; }
static void no_timer(void *arg) { (void)arg; failures += 1000; }
static void put_channel(void *arg) { EXPECT(tandem_channel_put(arg), 0); }
/* A thread cannot destroy itself from code it is running: its poll is still under way. */
static void destroy_self(void *arg) { EXPECT(tandem_thread_destroy(arg), -EBUSY); }

static void *other_thread(void *arg)
{
    (void)arg;
    /* A bring-your-own thread and a channel belong to the thread that made them. */
    EXPECT(tandem_thread_poll(thread), -EPERM);
    EXPECT(tandem_thread_destroy(thread), -EPERM);
    EXPECT(tandem_read(channel, buf, 0, 1, never, NULL), -EPERM);
    EXPECT(tandem_channel_put(channel), -EPERM);
    return NULL;
}

/* Runs inside tandem_thread_poll. */
static void on_thread(void *arg)
{
    (void)arg;
    EXPECT(tandem_desc_get_channel(desc, &channel), 0);
    EXPECT(tandem_read(channel, buf, 0, 1, NULL, NULL), -EINVAL);          /* no callback */
    EXPECT(tandem_read(channel, NULL, 0, 1, never, NULL), -EINVAL);         /* no buffer */
    EXPECT(tandem_read(channel, buf, 1024, 1, never, NULL), -ERANGE);       /* past the end */
    EXPECT(tandem_read(channel, buf, UINT64_MAX, 2, never, NULL), -ERANGE); /* overflow */
    EXPECT(tandem_read(channel, buf, 0, 0, never, NULL), -EINVAL);          /* zero blocks */
    EXPECT(tandem_read(channel, (char *)buf + 1, 0, 1, never, NULL), -EINVAL); /* misaligned */
    struct iovec iov[33];
    for (int i = 0; i < 33; i++) { iov[i].iov_base = buf; iov[i].iov_len = 512; }
    EXPECT(tandem_readv(channel, iov, 33, 0, 33, never, NULL), -EINVAL);    /* too many */
    EXPECT(tandem_readv(channel, iov, 2, 0, 1, never, NULL), -EINVAL);      /* lengths disagree */
    EXPECT(tandem_timer_cancel(123456), -ENOENT);
}

int main(void)
{
    tandem_env_opts opts;
    EXPECT(tandem_env_opts_init(NULL, sizeof(opts)), -EINVAL);
    EXPECT(tandem_env_opts_init(&opts, 3), -EINVAL);
    EXPECT(tandem_thread_create("early", &thread), -ENODEV); /* no engine yet */
    EXPECT(tandem_env_opts_init(&opts, sizeof(opts)), 0);
    opts.opts_size = 0;
    EXPECT(tandem_env_start(&opts), -EINVAL);
    EXPECT(tandem_env_start(NULL), -EINVAL);
    opts.opts_size = sizeof(opts);
    opts.core_mask = "0xZZ";
    EXPECT(tandem_env_start(&opts), -EINVAL);
    opts.core_mask = "[1023]";
    EXPECT(tandem_env_start(&opts), -ENODEV);
    opts.core_mask = NULL;
    EXPECT(tandem_env_start(&opts), 0);
    EXPECT(tandem_env_start(&opts), -EALREADY);

    /* Options and names. */
    tandem_bdev_opts bopts;
    EXPECT(tandem_bdev_opts_init(&bopts, sizeof(bopts) - 1), -EINVAL);
    EXPECT(tandem_bdev_opts_init(&bopts, sizeof(bopts)), 0);
    EXPECT(tandem_bdev_malloc_create(&bopts), -EINVAL); /* no name */
    bopts.name = "Malloc0";
    EXPECT(tandem_bdev_malloc_create(&bopts), -EINVAL); /* no size */
    bopts.num_blocks = 1024;
    bopts.block_size = 1000;
    EXPECT(tandem_bdev_malloc_create(&bopts), -EINVAL); /* block size */
    bopts.block_size = 512;
    EXPECT(tandem_bdev_malloc_create(&bopts), 0);
    EXPECT(tandem_bdev_malloc_create(&bopts), -EEXIST);
    EXPECT(tandem_bdev_uring_create("U0", "/nonexistent/file.img", 0), -ENOENT);
    EXPECT(tandem_bdev_error_create("nope", NULL), -ENODEV);
    EXPECT(tandem_bdev_error_create("Malloc0", NULL), 0);
    EXPECT(tandem_bdev_delete("Malloc0"), -EBUSY); /* claimed by EE_Malloc0 */
    tandem_fault fault;
    EXPECT(tandem_fault_init(&fault, sizeof(fault)), 0);
    EXPECT(tandem_bdev_error_inject("Malloc0", &fault), -EINVAL); /* not an error bdev */
    EXPECT(tandem_bdev_error_inject("EE_Malloc0", NULL), -EINVAL);
    fault.action = 7; /* not a TANDEM_FAULT_* */
    EXPECT(tandem_bdev_error_inject("EE_Malloc0", &fault), -EINVAL);
    fault.action = TANDEM_FAULT_DROP;
    EXPECT(tandem_bdev_error_inject("EE_Malloc0", &fault), 0);
    EXPECT(tandem_bdev_error_clear("EE_Malloc0"), 0);
    EXPECT(tandem_bdev_delete("EE_Malloc0"), 0);
    tandem_iostat st;
    EXPECT(tandem_bdev_get_iostat("nope", &st), -ENODEV);
    EXPECT(tandem_bdev_get_iostat("Malloc0", NULL), -EINVAL);

    /* Descriptors: NULL, unknown, stale. */
    EXPECT(tandem_bdev_open(NULL, true, NULL, NULL, &desc), -EINVAL);
    EXPECT(tandem_bdev_open("nope", true, NULL, NULL, &desc), -ENODEV);
    EXPECT(tandem_bdev_open("Malloc0", true, NULL, NULL, NULL), -EINVAL);
    tandem_desc *closed;
    EXPECT(tandem_bdev_open("Malloc0", false, NULL, NULL, &closed), 0);
    EXPECT(tandem_desc_close(closed), 0);
    EXPECT(tandem_desc_close(closed), -EBADF);
    tandem_bdev_info info;
    EXPECT(tandem_desc_get_info(closed, &info), -EBADF);
    EXPECT(tandem_desc_close(NULL), -EINVAL);
    EXPECT(tandem_bdev_open("Malloc0", true, NULL, NULL, &desc), 0);
    EXPECT(tandem_desc_get_channel(desc, &channel), -EPERM); /* not on an engine thread */

    /* DMA memory. */
    EXPECT(tandem_dma_alloc(0, &buf), -EINVAL);
    EXPECT(tandem_dma_alloc(4096, NULL), -EINVAL);
    EXPECT(tandem_dma_alloc(4096, &buf), 0);
    void *spare;
    EXPECT(tandem_dma_alloc(4096, &spare), 0);
    EXPECT(tandem_dma_free(spare), 0);
    EXPECT(tandem_dma_free(spare), -EBADF);
    EXPECT(tandem_dma_free(NULL), -EINVAL);

    /* Engine threads. */
    uint32_t id;
    EXPECT(tandem_current_thread_id(&id), -EPERM);
    EXPECT(tandem_thread_create(NULL, &thread), -EINVAL);
    EXPECT(tandem_thread_create("main", &thread), 0);
    EXPECT(tandem_thread_id(thread, &id), 0);
    EXPECT(tandem_send_msg(id, NULL, NULL), -EINVAL);
    EXPECT(tandem_send_msg(999, on_thread, NULL), -ENODEV);
    EXPECT(tandem_send_msg(id, on_thread, NULL), 0);
    EXPECT(tandem_send_msg(id, destroy_self, thread), 0);
    for (int i = 0; i < 10; i++) tandem_thread_poll(thread);
    EXPECT(tandem_poller_register(NULL, NULL, 0, NULL), -EINVAL);
    tandem_poller *p;
    EXPECT(tandem_poller_register(idle_poller, NULL, 0, &p), -EPERM); /* off an engine thread */
    uint64_t timer;
    EXPECT(tandem_timer_set(10, no_timer, NULL, &timer), -EPERM);

    pthread_t other;
    pthread_create(&other, NULL, other_thread, NULL);
    pthread_join(other, NULL);

    /* Release from the right thread, then every handle is stale. */
    EXPECT(tandem_send_msg(id, put_channel, channel), 0);
    for (int i = 0; i < 10; i++) tandem_thread_poll(thread);
    EXPECT(tandem_desc_close(desc), 0);
    EXPECT(tandem_thread_destroy(thread), 0);
    EXPECT(tandem_thread_poll(thread), -EBADF);
    EXPECT(tandem_thread_destroy(thread), -EBADF);
    EXPECT(tandem_bdev_delete("Malloc0"), 0);
    EXPECT(tandem_bdev_delete("Malloc0"), -ENODEV);
    EXPECT(tandem_dma_free(buf), 0);
    EXPECT(tandem_log_set_level(9), -EINVAL);
    EXPECT(tandem_env_stop(), 0);
    EXPECT(tandem_env_stop(), -ENODEV);

    if (failures) { printf("bad_calls: FAIL (%d)\n", failures); return 1; }
    printf("bad_calls: PASS\n");
    return 0;
}
