/* Start the engine with one reactor, make a RAM bdev, write a pattern, read it back, verify,
 * stop. The I/O runs on the reactor: main hands it the work as a message and waits. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <tandem.h>

#define BLOCKS 8
#define BLOCK_SIZE 512

struct job {
    tandem_desc *desc;
    tandem_channel *ch;
    unsigned char *wbuf, *rbuf;
    int status;
    atomic_int done;
};

static void finish(struct job *j, int status)
{
    j->status = status;
    if (j->ch) tandem_channel_put(j->ch);
    if (j->desc) tandem_desc_close(j->desc);
    atomic_store(&j->done, 1);
}

static void read_done(void *arg, int status)
{
    struct job *j = arg;
    if (status == 0 && memcmp(j->wbuf, j->rbuf, BLOCKS * BLOCK_SIZE) != 0) status = -1;
    finish(j, status);
}

static void write_done(void *arg, int status)
{
    struct job *j = arg;
    if (status != 0) { finish(j, status); return; }
    int rc = tandem_read(j->ch, j->rbuf, 16, BLOCKS, read_done, j);
    if (rc != 0) finish(j, rc);
}

/* Runs on reactor 0. */
static void start(void *arg)
{
    struct job *j = arg;
    int rc = tandem_bdev_open("Malloc0", true, NULL, NULL, &j->desc);
    if (rc == 0) rc = tandem_desc_get_channel(j->desc, &j->ch);
    if (rc == 0) rc = tandem_write(j->ch, j->wbuf, 16, BLOCKS, write_done, j);
    if (rc != 0) finish(j, rc);
}

/* The firmware's logger: counts the engine's lines that announce a bdev, prints warnings. */
static void log_line(void *arg, tandem_log_level level, const char *module, const char *msg)
{
    if (strstr(msg, "bdev created") != NULL) ++*(int *)arg;
    if (level <= TANDEM_LOG_WARN) fprintf(stderr, "[tandem %s] %s\n", module, msg);
}

int main(void)
{
    struct job j = {0};
    int created_lines = 0;
    tandem_log_set_callback(log_line, &created_lines);
    tandem_log_set_level(TANDEM_LOG_INFO);
    printf("hello_bdev: tandem %s\n", tandem_version());

    tandem_env_opts opts;
    tandem_env_opts_init(&opts, sizeof(opts));
    opts.core_mask = "[0]";
    int rc = tandem_env_start(&opts);
    if (rc != 0) { fprintf(stderr, "env_start: %s\n", tandem_strerror(rc)); return 1; }

    tandem_bdev_opts bopts;
    tandem_bdev_opts_init(&bopts, sizeof(bopts));
    bopts.name = "Malloc0";
    bopts.block_size = BLOCK_SIZE;
    bopts.num_blocks = 16384;
    rc = tandem_bdev_malloc_create(&bopts);
    if (rc != 0) { fprintf(stderr, "malloc_create: %s\n", tandem_strerror(rc)); return 1; }

    void *w, *r;
    if (tandem_dma_alloc(BLOCKS * BLOCK_SIZE, &w) || tandem_dma_alloc(BLOCKS * BLOCK_SIZE, &r)) return 1;
    j.wbuf = w;
    j.rbuf = r;
    for (int i = 0; i < BLOCKS * BLOCK_SIZE; i++) j.wbuf[i] = (unsigned char)(i * 7 + 3);

    rc = tandem_send_msg(0, start, &j);
    if (rc != 0) { fprintf(stderr, "send_msg: %s\n", tandem_strerror(rc)); return 1; }
    for (int waited = 0; !atomic_load(&j.done) && waited < 10000; waited++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    if (!atomic_load(&j.done)) { fprintf(stderr, "hello_bdev: timed out\n"); return 1; }

    tandem_iostat st;
    tandem_bdev_get_iostat("Malloc0", &st);
    printf("hello_bdev: status %d, %llu bytes written, %llu read\n", j.status,
           (unsigned long long)st.bytes_written, (unsigned long long)st.bytes_read);

    tandem_dma_free(w);
    tandem_dma_free(r);
    rc = tandem_bdev_delete("Malloc0");
    int stop = tandem_env_stop();
    tandem_log_set_callback(NULL, NULL);
    printf("hello_bdev: the log callback saw %d bdev-created line(s)\n", created_lines);
    if (j.status != 0 || rc != 0 || stop != 0 || st.bytes_written != BLOCKS * BLOCK_SIZE ||
        st.bytes_read != BLOCKS * BLOCK_SIZE || created_lines != 1) {
        printf("hello_bdev: FAIL (%s)\n", tandem_strerror(j.status));
        return 1;
    }
    printf("hello_bdev: PASS\n");
    return 0;
}
