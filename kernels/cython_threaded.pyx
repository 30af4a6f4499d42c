# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Small batches on several cores, inference and training: each thread owns a slice of the units (gate columns).

At batch 1-3 a time step is a GEMV h @ R (R is (U, G*U): 1 MB for an LSTM of 256 float32 units, 4 MB at 512)
plus the gate math, and one core streams all of R every step. Here n threads share the time loop, split by units:
thread k owns units [u0, u1), i.e. the columns g*U + [u0, u1) of every gate g (LSTM i, f, c, o; GRU z, r, h),
and so all the gate math of its units. Once per call its columns of W and R are copied into a buffer of its own
(packed in panels, below), which it then streams every step: each core reads half of R (with 2 threads), from
its own L2 where the half fits. (Measured on this Zen 4 VM, one core reads a GEMV's matrix at ~95 GB/s from L3
and ~105 GB/s from L2: the gain is mostly the second core's bandwidth, not L2 residency.) Per step, thread k:

    a[:, own columns] = h_{t-1} @ R[:, own columns] + xw_t[:, own columns]     (xw = x W: its own columns, once)
    gate math of its units -> h_t[:, u0:u1] (and c_t, y_t for those units)
    barrier: every thread has written its part of h_t, which all threads read in the next step

h is double-buffered (the step reads one buffer and writes the other), so one barrier per step suffices: a
thread can only start writing a buffer after every thread has finished the step that read it. GRU with
reset_after=False needs all of r * h_{t-1} before the h gate's matmul: a second barrier in the middle of the step
(r * h is written to a shared (B, U) buffer, each thread its own units).

Every output column's sums run in the same order whichever thread owns the column, so results are the same bit
for bit for any thread count (they differ from the BLAS-based cython_* kernels in the last bits).

No BLAS. OpenBLAS decides by size whether to run a GEMV or GEMM on its own threads (measured here: scipy's
sgemv runs on 2 threads from 2048 x 512 up), so BLAS calls from these threads could each fork onto the same
cores, and OpenBLAS's idle threads busy-wait after a call, competing with these. The products here are small and
regular: one hand-written kernel does them (kernels/packed_gemm.h, shared with the whole-batch Cython kernels
through fused_blas.packed_matmul), C = A @ P for a panel-packed P, vectorized with GCC
vector extensions, compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at run time; 1.1-1.3x
as fast as OpenBLAS's single-threaded sgemv on these shapes, 2x and more at 2-4 rows. It also does each thread's
share of the input projection x W (its own columns, all time steps, before the loop).

Threads: a pool of POSIX threads started on first use and kept (n - 1 of them; the calling thread is thread 0),
each finished with its part before the call returns (fr_parallel). Between calls a worker waits ~200 us on the
CPU, then sleeps; one woken from sleep starts ~40 us late here (it is first pinned off the caller's CPU), which
the calling thread spends on the preparation of threads that have not started yet (packing, projection:
_prepare is claimed by whichever thread gets to it first). Threads started per call, as before, cost ~30-90 us
a call (2 threads passing one barrier: 32-46 us back to back, 91 us after 2 ms idle; the pool: 2.4 and 44 us). The barrier spins on a GCC
__atomic counter: PAUSE, then sched_yield(), then short sleeps (fr_wait): 40-130 ns per barrier here between
two threads doing nothing else, 100-350 ns per step inside the kernel (the barrier, and h's cache lines changing
cores; measured at 2-32 units, where a step has almost no work). Each thread sets FTZ/DAZ for itself and
restores its mode before leaving (fused_blas.pxd, "Denormals").

Training: the forward also writes the workspaces (each thread its units' columns), and the backward runs BPTT
split by units in the same way, then shares the products over all positions ("Backward" below).

Entry points mirror the kernel contract (kernels/README.md), plus n_threads and stats; the forward takes the
workspaces as a tuple (None: inference), without the `training` flag:

    simple_rnn_forward(x, W, R, b, h0, lengths, reverse, relu, y, hT, n_threads, stats=None, workspaces=None,
                       packed=None)
    lstm_forward(x, W, R, b, h0, c0, lengths, reverse, y, hT, cT, n_threads, stats=None, workspaces=None,
                 packed=None)
    gru_forward(x, W, R, b_in, b_rec, h0, lengths, reverse, reset_after, y, hT, n_threads, stats=None,
                workspaces=None, packed=None)
    pack_split(W, R, n_threads, reset_before=False)   # `packed` for forward calls on n_threads threads
    simple_rnn_backward(x, W, R, lengths, reverse, relu, ws_hprev, ws_h, dy, dhT, dx, dh0, dW, dR, db,
                        n_threads, stats=None)
    lstm_backward(x, W, R, lengths, reverse, ws_hprev, ws_cprev, ws_gates, ws_c, dy, dhT, dcT,
                  dx, dh0, dc0, dW, dR, db, n_threads, stats=None)
    gru_backward(x, W, R, lengths, reverse, reset_after, ws_hprev, ws_gates, ws_vh, dy, dhT,
                 dx, dh0, dW, dR, db_in, db_rec, n_threads, stats=None)

Each returns the number of threads it ran on (min(n_threads, units)), or -1 if the system refused to start a
thread or the pool was busy with another call: then nothing was computed, and the caller runs it again on 1
thread (which needs none).
`stats`: None, or a dict that receives per-thread counters (unit bounds, barrier waits, PAUSE rounds, yields,
sleeps, nanoseconds waited; the first wait, which also waits for the threads to start, apart). Arrays as in the
contract (C-contiguous, one float dtype, int64 lengths; for GRU reset_after=False b_rec is not read); validation
is the caller's (fastrnn._column_split, called by ops).
"""
import numpy as np

from fastrnn.kernels import KEEP_SCRATCH_BYTES, kept_scratch

from cpython.pycapsule cimport PyCapsule_New
from cython cimport floating
from libc.stdint cimport int64_t, uintptr_t
from libc.string cimport memcpy, memset

from fused_blas cimport (active_inputs, active_rows, aligned64, column_sums, flush_denormals, fr_isa, fr_set_isa_cap,
                         gru_backward_row, gru_gates_row, gru_reset_backward_row1, gru_reset_backward_row2, gru_row,
                         gru_state_row, has_padding, lstm_backward_row, lstm_row, max_length, pack,
                         pack_gate_columns, pack_transposed, packed_elements, packed_matmul, packed_size,
                         panels_backward, position, restore_fp_mode, simple_rnn_backward_row, simple_rnn_row,
                         weight_grads, weight_grads_work)


cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    /* Threads need POSIX threads and GCC/Clang atomics. Elsewhere (MSVC) the module still builds, and runs every
       call on the calling thread (fr_parallel refuses n > 1), where the atomics below are plain accesses. */
    #if defined(__GNUC__) && !defined(_WIN32)
    #include <pthread.h>
    #include <sched.h>
    #include <time.h>
    #define FR_HAVE_PTHREADS 1
    #define FR_ALIGN64 __attribute__((aligned(64)))
    #define FR_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define FR_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define FR_STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define FR_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)
    #define FR_CAS(p, e, d) __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
    #else
    #define FR_HAVE_PTHREADS 0
    #define FR_ALIGN64
    #define FR_LOAD(p) (*(p))
    #define FR_STORE(p, v) (*(p) = (v))
    #define FR_STORE_RELAXED(p, v) (*(p) = (v))
    #define FR_ADD(p, v) (*(p) += (v))
    #define FR_CAS(p, e, d) (*(p) == *(e) ? (*(p) = (d), 1) : (*(e) = *(p), 0))
    #endif

    /* ---------------------------------------------------------------------------------------------------------
       Waiting for another thread: fr_wait(word, value) returns once *word != value. In three stages: FR_SPINS
       rounds of PAUSE (~26 ns each here: ~100 us, about what starting a thread takes), then FR_YIELDS rounds of
       sched_yield() (~0.5 us each when nothing else wants the core), then sleeps of FR_SLEEP_NS (~70 us each
       here: the least a VM's timer gives). With as many threads as free cores the other thread arrives within
       microseconds and the wait never leaves the first stage. When it has been descheduled (more runnable threads
       than cores), sleeping frees this core, so that the scheduler can run it here.
       st (may be NULL): the calling thread's own FR_NSTAT counters, added to: [0] waits, [1] PAUSE rounds,
       [2] yields, [3] sleeps, [4] nanoseconds waited (the clock is read only when the thread has to wait; the
       counters are the thread's own memory, so counting never touches a shared cache line); [5] is the caller's.
       --------------------------------------------------------------------------------------------------------- */
    #ifndef FR_SPINS
    #define FR_SPINS 4000
    #endif
    #ifndef FR_YIELDS
    #define FR_YIELDS 200
    #endif
    #ifndef FR_SLEEP_NS
    #define FR_SLEEP_NS 20000
    #endif
    #define FR_NSTAT 6

    static inline void fr_pause(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_ia32_pause();
    #elif defined(__GNUC__) && defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }

    static inline long long fr_now_ns(void) {
    #if FR_HAVE_PTHREADS
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (long long) t.tv_sec * 1000000000LL + t.tv_nsec;
    #else
        return 0;
    #endif
    }

    static void fr_wait(const unsigned int* word, unsigned int value, long long* st) {
        long long spins = 0, yields = 0, sleeps = 0, t0 = 0;
        if (FR_LOAD(word) == value) {
            if (st)
                t0 = fr_now_ns();
            while (FR_LOAD(word) == value) {
                if (spins < FR_SPINS) {
                    fr_pause();
                    spins++;
    #if FR_HAVE_PTHREADS
                } else if (yields < FR_YIELDS) {
                    sched_yield();
                    yields++;
                } else {
                    struct timespec ts = {0, FR_SLEEP_NS};
                    nanosleep(&ts, NULL);
                    sleeps++;
    #endif
                }
            }
            if (st)
                st[4] += fr_now_ns() - t0;
        }
        if (st) {
            st[0] += 1; st[1] += spins; st[2] += yields; st[3] += sleeps;
        }
    }

    /* ---------------------------------------------------------------------------------------------------------
       Barrier: n threads, reusable. `count` counts arrivals in the current phase, `phase` numbers the phases.
       The last thread to arrive resets count and advances phase (release); the others wait for phase to move
       (acquire). So every write a thread made before the barrier is visible to every thread after it.
       --------------------------------------------------------------------------------------------------------- */
    typedef struct {
        int n;
        unsigned int count;
        unsigned int phase;
    } FR_ALIGN64 fr_barrier;  /* a cache line of its own */

    static void fr_barrier_init(fr_barrier* b, int n) {
        b->n = n; b->count = 0; b->phase = 0;
    }

    static void fr_barrier_wait(fr_barrier* b, long long* st) {
        unsigned int ph = FR_LOAD(&b->phase);
        if (b->n <= 1)
            return;
        if (FR_ADD(&b->count, 1u) == (unsigned int) b->n) {
            FR_STORE_RELAXED(&b->count, 0u);
            FR_STORE(&b->phase, ph + 1u);
            if (st)
                st[0] += 1;
            return;
        }
        fr_wait(&b->phase, ph, st);
    }

    /* Work items that one thread claims and others may wait for: 0 free, 1 claimed, 2 done. */
    static int fr_claim(unsigned int* item) {
        unsigned int expected = 0;
        return FR_CAS(item, &expected, 1u);
    }

    static void fr_release(unsigned int* item) { FR_STORE(item, 2u); }

    /* Wait until the item is done. */
    static void fr_wait_done(unsigned int* item) {
        unsigned int v;
        while ((v = FR_LOAD(item)) != 2u)
            fr_wait(item, v, NULL);
    }

    /* ---------------------------------------------------------------------------------------------------------
       fr_parallel(n, fn, ctx, barrier): fn(ctx, k) for k = 0..n-1 on n threads (k = 0 on the calling thread);
       returns when all have finished. No start barrier: each thread starts on its own work at once.

       The threads k >= 1 are a pool's, started on first use and kept: starting a thread per call (and waiting
       for it to count itself out) cost ~42 us a call here (2 threads passing one barrier: 46 us, 4 us alone), a
       sixth of a GRU call of 128 units at batch 1 on 2 threads. A worker that has finished its part waits for
       the next for ~200 us (fr_spin_while; back-to-back calls, a service's or a benchmark's, find it there) and
       then sleeps on a condition variable, which the next call signals.
       Each worker has a slot of its own (task, generation, done flag): a call writes the slots of workers
       1..n-1 only, and waits until each has marked its slot done, so a slot is never rewritten while read.
       One call at a time: another thread's call while the pool is busy gets -1 (the caller reruns it on its
       own thread; fastrnn._column_split runs one column-split call at a time anyway).
       Each worker starts on a CPU other than the caller's (FR_PIN_START). After fork() the child has no workers
       and starts its own.
       Returns 0, or -1 when the pool is busy or a worker could not be started; then no work was handed out and
       nothing was written.
       --------------------------------------------------------------------------------------------------------- */
    typedef void (*fr_task)(void* ctx, int k);

    /* Linux starts a new thread on its creator's CPU (measured here in most runs: both threads then share one
       core until the scheduler moves one, milliseconds later, and 1000 barriers took 16-48 ms instead of
       0.1-0.4 ms). So each worker starts pinned to a CPU other than the caller's (the allowed CPUs after the
       caller's, in turn), and unpins itself at once: a starting place, not a binding. */
    #if FR_HAVE_PTHREADS && defined(__linux__) && defined(_GNU_SOURCE) && defined(CPU_SETSIZE)
    #define FR_PIN_START 1
    #else
    #define FR_PIN_START 0
    #endif

    #define FR_MAX_THREADS 256

    /* Tests: pretend that starting thread k fails when k == fr_fail_thread (0: never): the call returns -1
       (whether or not the pool already has that worker). */
    static int fr_fail_thread = 0;

    #if FR_HAVE_PTHREADS
    typedef struct {
        fr_task fn;
        void* ctx;
        int k;
        unsigned int gen;       /* bumped (release) by the caller when the slot holds a new task */
        unsigned int done;      /* set to gen (release) by the worker when it has finished that task */
        pthread_t tid;
        int sleeping;           /* in pthread_cond_wait (guarded by fr_pool.mu) */
    #if FR_PIN_START
        cpu_set_t start_cpu, allowed;
        int pin;                /* start_cpu / allowed are set */
    #endif
    } FR_ALIGN64 fr_slot;

    static struct {
        pthread_mutex_t mu;     /* guards the sleep / wake-up of workers */
        pthread_cond_t cv;
        int sleepers;
        int workers;            /* started so far: slots 1..workers */
        int busy;               /* a call is running */
        int atfork;             /* the fork handler is registered */
        fr_slot slot[FR_MAX_THREADS];
    } fr_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};

    static void fr_pool_after_fork(void) {
        pthread_mutex_init(&fr_pool.mu, NULL);
        pthread_cond_init(&fr_pool.cv, NULL);
        fr_pool.sleepers = 0;
        fr_pool.workers = 0;
        fr_pool.busy = 0;
        memset(fr_pool.slot, 0, sizeof(fr_pool.slot));
    }

    /* An idle worker's wait for *word != value, before it sleeps: FR_IDLE_ROUNDS rounds of 64 PAUSEs and a
       sched_yield() (~2 us each here: ~200 us in all). The yields let another thread that wants this core have it
       at once (more threads than cores: 3 threads passing one barrier on these 2 cores took 200 us a call with
       ~100 us of PAUSE first, 60 us with threads started per call); 1 if the word changed. */
    #ifndef FR_IDLE_ROUNDS
    #define FR_IDLE_ROUNDS 100
    #endif
    static int fr_spin_while(const unsigned int* word, unsigned int value) {
        int r, i;
        for (r = 0; r < FR_IDLE_ROUNDS; r++) {
            for (i = 0; i < 64; i++) {
                if (FR_LOAD(word) != value)
                    return 1;
                fr_pause();
            }
            sched_yield();
        }
        return FR_LOAD(word) != value;
    }

    static void* fr_worker(void* p) {
        fr_slot* s = (fr_slot*) p;
        unsigned int seen = 0;
    #if FR_PIN_START
        if (s->pin)  /* started on a CPU of its own; from now on the scheduler's choice again */
            pthread_setaffinity_np(pthread_self(), sizeof(cpu_set_t), &s->allowed);
    #endif
        for (;;) {
            if (!fr_spin_while(&s->gen, seen)) {
                int slept = 0;
                pthread_mutex_lock(&fr_pool.mu);
                while (FR_LOAD(&s->gen) == seen) {
                    fr_pool.sleepers++;
                    s->sleeping = 1;
                    pthread_cond_wait(&fr_pool.cv, &fr_pool.mu);
                    s->sleeping = 0;
                    fr_pool.sleepers--;
                    slept = 1;
                }
                pthread_mutex_unlock(&fr_pool.mu);
    #if FR_PIN_START
                if (slept && s->pin)  /* woken on another CPU than the caller's (fr_parallel): unpinned again */
                    pthread_setaffinity_np(pthread_self(), sizeof(cpu_set_t), &s->allowed);
    #else
                (void) slept;
    #endif
            }
            seen = FR_LOAD(&s->gen);
            s->fn(s->ctx, s->k);
            FR_STORE(&s->done, seen);  /* the last access to the caller's memory for this task */
        }
        return NULL;
    }

    /* Starts workers until there are n - 1; 0, or -1 if the system refused one. */
    static int fr_pool_grow(int n) {
        pthread_t tid;
        pthread_attr_t attr;
        int k;
    #if FR_PIN_START
        cpu_set_t allowed;
        int others[FR_MAX_THREADS], n_others = 0, c, me = sched_getcpu();
        if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0)
            for (c = 1; c <= CPU_SETSIZE && n_others < FR_MAX_THREADS; c++) {
                int cpu = ((me < 0 ? 0 : me) + c) % CPU_SETSIZE;   /* the CPUs after this one, in turn */
                if (cpu != me && CPU_ISSET(cpu, &allowed))
                    others[n_others++] = cpu;
            }
    #endif
        if (!fr_pool.atfork) {
            if (pthread_atfork(NULL, NULL, fr_pool_after_fork) != 0)
                return -1;
            fr_pool.atfork = 1;
        }
        for (k = fr_pool.workers + 1; k < n; k++) {
            fr_slot* s = &fr_pool.slot[k];
            memset(s, 0, sizeof(*s));
            if (pthread_attr_init(&attr) != 0)
                return -1;
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    #if FR_PIN_START
            if (n_others > 0) {
                CPU_ZERO(&s->start_cpu);
                CPU_SET(others[(k - 1) % n_others], &s->start_cpu);
                if (pthread_attr_setaffinity_np(&attr, sizeof(cpu_set_t), &s->start_cpu) == 0) {
                    s->allowed = allowed;
                    s->pin = 1;
                }
            }
    #endif
            if (pthread_create(&tid, &attr, fr_worker, s) != 0) {
                pthread_attr_destroy(&attr);
                return -1;
            }
            s->tid = tid;
            pthread_attr_destroy(&attr);
            fr_pool.workers = k;
        }
        return 0;
    }
    #endif

    #if FR_PIN_START
    /* Linux wakes a thread on its waker's CPU when it judges that cheaper (wake_affine): a sleeping worker woken
       by the caller then shared the caller's core (2 threads passing one barrier after 2 ms idle: 136 us a call,
       91 us with threads started per call). So, before the wake-up, each sleeping worker of slots 1..n-1 is
       pinned to a CPU other than the caller's (in turn, as fr_pool_grow starts them); it unpins itself once
       awake. Called with fr_pool.mu held. */
    static void fr_pin_sleepers(int n) {
        cpu_set_t one;
        int k, c, me = sched_getcpu(), others[FR_MAX_THREADS], n_others = 0;
        const cpu_set_t* allowed = &fr_pool.slot[1].allowed;
        if (!fr_pool.slot[1].pin || me < 0)
            return;
        for (c = 1; c <= CPU_SETSIZE && n_others < FR_MAX_THREADS; c++) {
            int cpu = (me + c) % CPU_SETSIZE;
            if (cpu != me && CPU_ISSET(cpu, allowed))
                others[n_others++] = cpu;
        }
        if (n_others == 0)
            return;
        for (k = 1; k < n; k++)
            if (fr_pool.slot[k].sleeping) {
                CPU_ZERO(&one);
                CPU_SET(others[(k - 1) % n_others], &one);
                pthread_setaffinity_np(fr_pool.slot[k].tid, sizeof(one), &one);
            }
    }
    #endif

    static int fr_parallel(int n, fr_task fn, void* ctx) {
        if (n <= 1) {
            fn(ctx, 0);
            return 0;
        }
    #if FR_HAVE_PTHREADS
        {
            int k, expected = 0, status = 0;
            if (n > FR_MAX_THREADS || (fr_fail_thread >= 1 && fr_fail_thread < n))
                return -1;
            if (!__atomic_compare_exchange_n(&fr_pool.busy, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return -1;
            if (n - 1 > fr_pool.workers && fr_pool_grow(n) != 0)
                status = -1;
            if (status == 0) {
                for (k = 1; k < n; k++) {
                    fr_slot* s = &fr_pool.slot[k];
                    s->fn = fn; s->ctx = ctx; s->k = k;
                    FR_STORE(&s->gen, s->gen + 1u);
                }
                pthread_mutex_lock(&fr_pool.mu);
                if (fr_pool.sleepers > 0) {
    #if FR_PIN_START
                    fr_pin_sleepers(n);
    #endif
                    pthread_cond_broadcast(&fr_pool.cv);
                }
                pthread_mutex_unlock(&fr_pool.mu);
                fn(ctx, 0);
                for (k = 1; k < n; k++) {  /* until every worker has finished its part */
                    fr_slot* s = &fr_pool.slot[k];
                    unsigned int v;
                    while ((v = FR_LOAD(&s->done)) != s->gen)
                        fr_wait(&s->done, v, NULL);
                }
            }
            __atomic_store_n(&fr_pool.busy, 0, __ATOMIC_RELEASE);
            return status;
        }
    #else
        (void) fn; (void) ctx;
        return -1;
    #endif
    }
    """
    ctypedef struct fr_barrier:
        int n
    ctypedef void (*fr_task)(void* ctx, int k) noexcept nogil
    void fr_barrier_init(fr_barrier* b, int n) noexcept nogil
    void fr_barrier_wait(fr_barrier* b, long long* st) noexcept nogil
    long long fr_now_ns() noexcept nogil
    bint fr_claim(unsigned int* item) noexcept nogil
    void fr_release(unsigned int* item) noexcept nogil
    void fr_wait_done(unsigned int* item) noexcept nogil
    int fr_parallel(int n, fr_task fn, void* ctx) noexcept nogil
    int fr_fail_thread
    int FR_MAX_THREADS
    enum: FR_NSTAT


# ---------------------------------------------------------------------------------------------------------------
# Per call: what every thread shares
# ---------------------------------------------------------------------------------------------------------------

cdef enum:
    SIMPLE = 0
    LSTM = 1
    GRU = 2

cdef struct Shared:
    int cell, n, isa
    bint relu, reverse, reset_after
    Py_ssize_t B, T, D, U, G
    const void* x
    const void* W
    const void* R
    const void* b_in
    const void* b_rec
    const void* h0
    const void* c0
    const int64_t* lengths
    void* y
    void* hT
    void* cT
    void* ws[4]            # training: the workspaces (kernels/README.md; LSTM hprev, cprev, gates, c; GRU hprev,
                           # gates, vh (NULL for reset_after=False); SimpleRNN hprev, h), each thread its units;
                           # all NULL in inference
    void* hbuf             # (2, B, U): h double buffer
    void* rh               # (B, U): r * h_prev, GRU reset_after=False
    const Py_ssize_t* ubound  # (n + 1,) unit boundaries
    char* scratch          # n regions of `stride` bytes, 64-byte aligned
    Py_ssize_t stride
    Py_ssize_t n_panel_W, n_panel_R  # elements of the packed W and R of the widest thread
    const char* packed     # NULL, or the threads' W and R packed before the call (_pack_split): thread k's at
    Py_ssize_t packed_stride  # packed + k * packed_stride, R's _round64(n_panel_W * item) bytes after W's
    unsigned int* prep     # (n,): thread k's preparation (_prepare): 0 free, 1 claimed, 2 done
    long long* stats       # (n, 2 * FR_NSTAT): per thread, fr_barrier_wait's counters after the first wait ([5]:
                           # ns from the first wait's end to the loop's end), and of the first wait ([0]: the
                           # number of preparations done)
    fr_barrier bar         # on a cache line of its own (the fields above are read during the loop)


cdef inline Py_ssize_t _round64(Py_ssize_t nbytes) noexcept nogil:
    return (nbytes + 63) // 64 * 64



# ---------------------------------------------------------------------------------------------------------------
# One thread's part of the call
# ---------------------------------------------------------------------------------------------------------------

ctypedef void (*prepare_fn)(void* ctx, int k) noexcept nogil


cdef long long _prepare_all(unsigned int* prep, int n, int k, prepare_fn fn, void* ctx) noexcept nogil:
    """Thread k's preparation fn(ctx, k) first, then any other thread's that nobody has claimed yet (that thread
    has not started: starting one takes ~50-150 us here, which this thread spends on its work instead of waiting);
    then wait until its own is done, if another thread took it. Returns how many it ran."""
    cdef long long done = 0
    cdef int other
    if fr_claim(&prep[k]):
        fn(ctx, k)
        fr_release(&prep[k])
        done += 1
    for other in range(n):
        if other != k and fr_claim(&prep[other]):
            fn(ctx, other)
            fr_release(&prep[other])
            done += 1
    fr_wait_done(&prep[k])
    return done


cdef inline void _put_thread_stats(long long* stats, int k, const long long* st_rest, const long long* st_first,
                                   long long prepared) noexcept nogil:
    """Thread k's barrier counters (after the first wait, and of the first wait) and preparations into the call's
    (n, 2 * FR_NSTAT) stats."""
    memcpy(stats + 2 * FR_NSTAT * k, st_rest, FR_NSTAT * sizeof(long long))
    memcpy(stats + 2 * FR_NSTAT * k + FR_NSTAT, st_first, FR_NSTAT * sizeof(long long))
    stats[2 * FR_NSTAT * k + FR_NSTAT] = prepared


cdef inline Py_ssize_t _scratch_offsets(Shared* S, Py_ssize_t item, Py_ssize_t GN, Py_ssize_t off[6]) noexcept nogil:
    """Byte offsets in a thread's scratch of: packed W, packed R, its input projection (B*T, GN), one step's
    products (B, GN), its input biases (GN) and recurrent biases (GN)."""
    off[0] = 0
    off[1] = off[0] + _round64(S.n_panel_W * item)
    off[2] = off[1] + _round64(S.n_panel_R * item)
    off[3] = off[2] + _round64(S.B * S.T * GN * item)
    off[4] = off[3] + _round64(S.B * GN * item)
    off[5] = off[4] + _round64(GN * item)
    return off[5] + _round64(GN * item)


cdef inline Py_ssize_t _ws_gates(int cell, int w) noexcept nogil:
    """Width in units of workspace w of a cell (ops.WORKSPACES): the gates' workspace has G, the others 1."""
    if w == 2 and cell == LSTM:
        return 4
    if w == 1 and cell == GRU:
        return 3
    return 1


cdef inline void _copy_gates(floating* dst, Py_ssize_t U, const floating* a, Py_ssize_t nu, Py_ssize_t G) noexcept nogil:
    """A thread's gate-major row a (G blocks of nu) into a full row dst (G blocks of U, at the thread's first unit)."""
    cdef Py_ssize_t g
    for g in range(G):
        memcpy(dst + g * U, a + g * nu, nu * sizeof(floating))


cdef inline const char* _weights_of(const Shared* S, int k, const char* mine, const Py_ssize_t* off) noexcept nogil:
    """Where thread k's packed W starts, its packed R off[1] - off[0] bytes after it: its region of pack_split's
    array when the call was given one (S.packed, the same layout), else its own scratch region `mine`."""
    if S.packed != NULL:
        return S.packed + k * S.packed_stride
    return mine + off[0]


cdef void _prepare(floating* typed, Shared* S, int k) noexcept nogil:
    """Everything thread k needs before the time loop, for its units: its columns of W and R packed, its biases,
    its input projection (every position, padded ones too: their rows are never read); and its units' outputs
    y zero at padded positions, c = c0. Usually run by thread k itself (so what it reads every step starts out in
    its own cache), but by another thread when thread k has not started yet (_thread: starting a thread takes
    ~50-150 us here, which the calling thread spends on this instead of waiting)."""
    cdef Py_ssize_t B = S.B, T = S.T, D = S.D, U = S.U, G = S.G
    cdef Py_ssize_t u0 = S.ubound[k], u1 = S.ubound[k + 1], nu = u1 - u0, GN = G * nu
    cdef Py_ssize_t bb, t, g, j, width
    cdef int w
    cdef Py_ssize_t off[6]
    cdef char* mine = S.scratch + k * S.stride
    _scratch_offsets(S, sizeof(floating), GN, off)
    cdef const char* wts = _weights_of(S, k, mine, off)
    cdef floating* Wp = <floating*> wts
    cdef floating* Rp = <floating*> (wts + off[1] - off[0])
    cdef floating* xw = <floating*> (mine + off[2])
    cdef floating* bi = <floating*> (mine + off[4])
    cdef floating* br = <floating*> (mine + off[5])
    cdef const floating* b_in = <const floating*> S.b_in
    cdef const floating* b_rec = <const floating*> S.b_rec
    cdef floating* y = <floating*> S.y
    cdef floating* cT = <floating*> S.cT
    cdef const int64_t* lengths = S.lengths

    if S.packed == NULL:
        _pack_share(<const floating*> S.W, <const floating*> S.R, S.cell == GRU and not S.reset_after, D, U, G,
                    u0, nu, Wp, Rp)
    for g in range(G):
        for j in range(nu):
            bi[g * nu + j] = b_in[g * U + u0 + j]
            br[g * nu + j] = b_rec[g * U + u0 + j] if b_rec != NULL else 0
    for bb in range(B):
        for t in range(lengths[bb], T):
            memset(y + (bb * T + t) * U + u0, 0, nu * sizeof(floating))
            if S.ws[0] != NULL:  # training: padded positions of the workspaces hold zeros (backward's matmuls)
                for w in range(4):
                    if S.ws[w] != NULL:
                        width = _ws_gates(S.cell, w)
                        for g in range(width):
                            memset(<floating*> S.ws[w] + (bb * T + t) * width * U + g * U + u0, 0,
                                   nu * sizeof(floating))
        if cT != NULL:
            memcpy(cT + bb * U + u0, <const floating*> S.c0 + bb * U + u0, nu * sizeof(floating))
    if max_length(lengths, B) > 0:
        packed_matmul(<int> (B * T), <int> D, <const floating*> S.x, D, Wp, <int> GN, xw, GN, S.isa)


cdef void _pack_share(const floating* W, const floating* R, bint reset_before, Py_ssize_t D, Py_ssize_t U,
                      Py_ssize_t G, Py_ssize_t u0, Py_ssize_t nu, floating* Wp, floating* Rp) noexcept nogil:
    """A thread's columns of W and R (units [u0, u0 + nu) of every gate) packed at Wp and Rp (GRU reset_after=False:
    the z, r columns, then the h columns)."""
    pack_gate_columns(W, G * U, D, U, u0, nu, 0, G, Wp, True)
    if reset_before:
        pack_gate_columns(R, G * U, U, U, u0, nu, 0, 2, Rp, True)
        pack_gate_columns(R, G * U, U, U, u0, nu, 2, 1, Rp + packed_size(U, 2 * nu, sizeof(floating)), True)
    else:
        pack_gate_columns(R, G * U, U, U, u0, nu, 0, G, Rp, True)


cdef void _prepare_f32(void* ctx, int k) noexcept nogil:
    _prepare(<float*> NULL, <Shared*> ctx, k)


cdef void _prepare_f64(void* ctx, int k) noexcept nogil:
    _prepare(<double*> NULL, <Shared*> ctx, k)


cdef void _thread(floating* typed, Shared* S, int k) noexcept nogil:
    """Thread k of S.n: prepare (its own part, and any other thread's that has not been claimed yet), then run
    every step for its units. `typed` only picks the float or double version (NULL)."""
    cdef Py_ssize_t B = S.B, T = S.T, U = S.U, G = S.G
    cdef Py_ssize_t u0 = S.ubound[k], u1 = S.ubound[k + 1], nu = u1 - u0, GN = G * nu
    cdef Py_ssize_t off[6]
    cdef Py_ssize_t s, bb, t, lo, hi, n_steps, pos
    cdef bint reset_before = S.cell == GRU and not S.reset_after
    cdef const int64_t* lengths = S.lengths
    cdef const floating* hcur = <const floating*> S.h0
    cdef floating* y = <floating*> S.y
    cdef floating* hT = <floating*> S.hT
    cdef floating* cT = <floating*> S.cT
    cdef floating* hbuf = <floating*> S.hbuf
    cdef floating* rh = <floating*> S.rh
    cdef floating* hnext
    cdef char* mine = S.scratch + k * S.stride
    _scratch_offsets(S, sizeof(floating), GN, off)
    cdef floating* Rp = <floating*> (_weights_of(S, k, mine, off) + off[1] - off[0])
    cdef floating* xw = <floating*> (mine + off[2])
    cdef floating* hr = <floating*> (mine + off[3])
    cdef floating* bi = <floating*> (mine + off[4])
    cdef floating* br = <floating*> (mine + off[5])
    cdef floating* Rp_h = Rp + packed_size(U, 2 * nu, sizeof(floating))   # reset_before: the h gate's columns
    cdef Py_ssize_t GU = G * U
    cdef bint training = S.ws[0] != NULL
    cdef floating* ws_hprev = <floating*> S.ws[0]
    cdef floating* ws1 = <floating*> S.ws[1]
    cdef floating* ws2 = <floating*> S.ws[2]
    cdef floating* ws3 = <floating*> S.ws[3]
    cdef floating* a
    cdef floating* hrow
    cdef const floating* hprev
    cdef const floating* xrow
    cdef int cell = S.cell, isa = S.isa
    cdef bint reverse = S.reverse, relu = S.relu
    # barrier counters (fr_barrier_wait): of the first wait (it also waits for the other threads to start), the rest
    cdef long long st_first[FR_NSTAT]
    cdef long long st_rest[FR_NSTAT]
    cdef long long* st = st_first
    memset(st_first, 0, sizeof(st_first))
    memset(st_rest, 0, sizeof(st_rest))
    cdef long long t_loop = 0
    cdef unsigned int fp_mode = flush_denormals()  # per thread: MXCSR is a thread's own

    cdef long long prepared = _prepare_all(S.prep, S.n, k,
                                           _prepare_f32 if floating is float else _prepare_f64, S)

    n_steps = max_length(lengths, B)
    for s in range(n_steps):
        hnext = hbuf + ((s + 1) & 1) * B * U
        active_rows(lengths, B, s, &lo, &hi)
        for bb in range(B):
            if lengths[bb] <= s:  # finished: the state stays (copied on to the buffer read next)
                memcpy(hnext + bb * U + u0, hcur + bb * U + u0, nu * sizeof(floating))

        # a = h_{t-1} @ R for the active rows, own columns (GRU reset_after=False: the z, r columns; its h gate
        # needs all of r * h_{t-1} first: a barrier, then (r * h_{t-1}) @ R_h)
        packed_matmul(<int> (hi - lo), <int> U, hcur + lo * U, U, Rp, <int> (2 * nu if reset_before else GN),
                      hr + lo * GN, GN, isa, panels_backward(s, hi - lo))
        if reset_before:
            for bb in range(lo, hi):
                if lengths[bb] > s:
                    t = position(s, lengths[bb], reverse)
                    gru_gates_row(hr + bb * GN, xw + (bb * T + t) * GN, bi, nu, hcur + bb * U + u0,
                                  rh + bb * U + u0)
            fr_barrier_wait(&S.bar, st)
            if st == st_first:
                t_loop = fr_now_ns()
            st = st_rest
            packed_matmul(<int> (hi - lo), <int> U, rh + lo * U, U, Rp_h, <int> nu, hr + lo * GN + 2 * nu, GN, isa,
                          panels_backward(s, hi - lo))
        # the gate math of its units (fused_blas rows) -> h_t[:, u0:u1] (LSTM: and c_t), and y_t
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            a = hr + bb * GN
            xrow = xw + pos * GN
            hprev = hcur + bb * U + u0
            hrow = hnext + bb * U + u0
            if training:  # the workspaces' columns of its units (kernels/README.md), before c and h change
                memcpy(ws_hprev + pos * U + u0, hprev, nu * sizeof(floating))
                if cell == LSTM:
                    memcpy(ws1 + pos * U + u0, cT + bb * U + u0, nu * sizeof(floating))
            if cell == LSTM:
                lstm_row(a, xrow, bi, nu, cT + bb * U + u0, hrow)
                if training:
                    _copy_gates(ws2 + pos * GU + u0, U, a, nu, 4)
                    memcpy(ws3 + pos * U + u0, cT + bb * U + u0, nu * sizeof(floating))
            elif cell == SIMPLE:
                simple_rnn_row(a, xrow, bi, nu, relu)
                memcpy(hrow, a, nu * sizeof(floating))
                if training:
                    memcpy(ws1 + pos * U + u0, hrow, nu * sizeof(floating))
            else:
                if reset_before:
                    gru_state_row(a, xrow, bi, nu, hprev, hrow)
                else:
                    gru_row(a, xrow, bi, br, nu, hprev, hrow, ws2 + pos * U + u0 if ws2 != NULL else NULL)
                if training:
                    _copy_gates(ws1 + pos * GU + u0, U, a, nu, 3)
            memcpy(y + pos * U + u0, hrow, nu * sizeof(floating))

        # Every thread's part of h_t is written before anyone reads h_t (and before the buffer it read is reused)
        fr_barrier_wait(&S.bar, st)
        if st == st_first:
            t_loop = fr_now_ns()
        st = st_rest
        hcur = hnext

    if t_loop:
        st_rest[5] = fr_now_ns() - t_loop  # the time loop after the first wait
    for bb in range(B):
        memcpy(hT + bb * U + u0, hcur + bb * U + u0, nu * sizeof(floating))
    _put_thread_stats(S.stats, k, st_rest, st_first, prepared)
    restore_fp_mode(fp_mode)


cdef void _task_f32(void* ctx, int k) noexcept nogil:
    _thread(<float*> NULL, <Shared*> ctx, k)


cdef void _task_f64(void* ctx, int k) noexcept nogil:
    _thread(<double*> NULL, <Shared*> ctx, k)


# ---------------------------------------------------------------------------------------------------------------
# Backward (BPTT), split by units in the same way
#
# The gate gradients of a step are element-wise per unit, so thread k computes those of its units, from the
# workspaces' columns of its units and its part of dh (and dc); dh_{t-1} = dA_t @ R.T then needs every unit's dA_t:
# a barrier, and thread k computes dh_{t-1} of its units, dA_t @ R[u0:u1, :].T (its rows of R, packed transposed
# once per call: (G*U, nu), its share of R again). dA_t of a step goes to a (B, G*U) buffer of two, by step parity,
# so one barrier per step suffices (a thread writes the buffer of step s - 1 only after every thread has passed the
# barrier of step s, which each reaches after its product of step s + 1, the last read of that buffer). GRU with
# reset_after=False needs d(r * h_{t-1}) = dA_h @ R_h.T before r's gradient: a second barrier, as in the forward.
# After the loop (a barrier: every position's gradients written) the threads share the big products: dW = x^T dU
# and dR = h_prev^T dV by rows (thread k its rows of [dW; dR], the boundaries multiples of 4 rows, the matmul's row
# block), dx = dU W.T by columns (thread k its columns, W's rows packed transposed), db by the gate columns of its
# units. Every output element is summed in the same order whichever thread computes it: the same bits for every
# thread count.
# ---------------------------------------------------------------------------------------------------------------

cdef struct BackShared:
    int cell, n, isa
    bint relu, reverse, reset_after
    Py_ssize_t B, T, D, U, G
    const void* x          # (B, T, D), zeros at padded positions (fused_blas.active_inputs)
    const void* W
    const void* R
    const int64_t* lengths
    const void* ws[4]      # as the forward's (Shared.ws)
    const void* dy
    const void* dhT
    const void* dcT
    void* dx
    void* dh               # dh0: the running gradient w.r.t. h (each thread its units); dc0 likewise (LSTM)
    void* dc
    void* dW
    void* dR
    void* db_in
    void* db_rec           # GRU reset_after=True, else NULL
    void* du               # (B*T, G*U): gradients w.r.t. the input projection at every position
    void* dv               # (B*T, G*U): w.r.t. the recurrent projection (GRU reset_after=True; else = du)
    void* rh               # (B*T, U): r * h_prev (GRU reset_after=False; else NULL)
    void* dstep            # (2, B, G*U): one step's gradients that the product with R.T reads, by step parity
    const Py_ssize_t* ubound  # (n + 1,) unit boundaries
    const Py_ssize_t* dbound  # (n + 1,) dx's column boundaries
    const Py_ssize_t* mbound  # (n + 1,) boundaries of the rows of [dW; dR] (D + U rows)
    char* scratch          # n regions of `stride` bytes, 64-byte aligned
    Py_ssize_t stride
    Py_ssize_t n_panel_R, n_panel_W, n_work, nu_max
    unsigned int* prep     # (n,): thread k's preparation (_prepare_backward): 0 free, 1 claimed, 2 done
    long long* stats       # as Shared.stats
    fr_barrier bar


cdef inline Py_ssize_t _back_offsets(BackShared* S, Py_ssize_t item, Py_ssize_t off[5]) noexcept nogil:
    """Byte offsets in a thread's scratch of: R's rows of its units packed transposed, W's rows of its dx columns
    packed transposed, one step's dh product (B, nu), weight_grads' work, and column sums' accumulator (G * nu)."""
    off[0] = 0
    off[1] = off[0] + _round64(S.n_panel_R * item)
    off[2] = off[1] + _round64(S.n_panel_W * item)
    off[3] = off[2] + _round64(S.B * S.nu_max * item)
    off[4] = off[3] + _round64(S.n_work * item)
    return off[4] + _round64(S.G * S.nu_max * sizeof(double))


cdef void _prepare_backward(floating* typed, BackShared* S, int k) noexcept nogil:
    """Thread k's part before the loop: its rows of R (and W) packed transposed, its units' dh (dc) = dhT (dcT),
    its columns of du (dv, rh) zero at padded positions. Run by whichever thread claims it first (as _prepare)."""
    cdef Py_ssize_t B = S.B, T = S.T, U = S.U, G = S.G, GU = S.G * S.U
    cdef Py_ssize_t u0 = S.ubound[k], nu = S.ubound[k + 1] - u0, d0 = S.dbound[k], nd = S.dbound[k + 1] - d0
    cdef Py_ssize_t bb, t, g, pos
    cdef Py_ssize_t off[5]
    cdef char* mine = S.scratch + k * S.stride
    _back_offsets(S, sizeof(floating), off)
    cdef floating* RTp = <floating*> (mine + off[0])
    cdef floating* WTp = <floating*> (mine + off[1])
    cdef const floating* R = <const floating*> S.R
    cdef floating* du = <floating*> S.du
    cdef floating* dv = <floating*> S.dv
    cdef floating* rh = <floating*> S.rh
    if S.cell == GRU and not S.reset_after:   # R[own rows, :2U].T, then R[own rows, 2U:].T
        pack_transposed(R + u0 * GU, GU, 2 * U, nu, RTp)
        pack_transposed(R + u0 * GU + 2 * U, GU, U, nu, RTp + packed_size(2 * U, nu, sizeof(floating)))
    else:
        pack_transposed(R + u0 * GU, GU, GU, nu, RTp)
    if nd > 0:
        pack_transposed(<const floating*> S.W + d0 * GU, GU, GU, nd, WTp)
    for bb in range(B):
        memcpy(<floating*> S.dh + bb * U + u0, <const floating*> S.dhT + bb * U + u0, nu * sizeof(floating))
        if S.dc != NULL:
            memcpy(<floating*> S.dc + bb * U + u0, <const floating*> S.dcT + bb * U + u0, nu * sizeof(floating))
        for t in range(S.lengths[bb], T):
            pos = bb * T + t
            for g in range(G):
                memset(du + pos * GU + g * U + u0, 0, nu * sizeof(floating))
                if dv != du:
                    memset(dv + pos * GU + g * U + u0, 0, nu * sizeof(floating))
            if rh != NULL:
                memset(rh + pos * U + u0, 0, nu * sizeof(floating))


cdef void _prepare_backward_f32(void* ctx, int k) noexcept nogil:
    _prepare_backward(<float*> NULL, <BackShared*> ctx, k)


cdef void _prepare_backward_f64(void* ctx, int k) noexcept nogil:
    _prepare_backward(<double*> NULL, <BackShared*> ctx, k)


cdef void _thread_backward(floating* typed, BackShared* S, int k) noexcept nogil:
    """Thread k of S.n: prepare, run every step backward for its units, then its share of dW, dR, dx, db."""
    cdef Py_ssize_t B = S.B, T = S.T, D = S.D, U = S.U, G = S.G, GU = S.G * S.U, BT = S.B * S.T
    cdef Py_ssize_t u0 = S.ubound[k], nu = S.ubound[k + 1] - u0, d0 = S.dbound[k], nd = S.dbound[k + 1] - d0
    cdef Py_ssize_t m0 = S.mbound[k], m1 = S.mbound[k + 1]
    cdef Py_ssize_t w0 = min(m0, D), w1 = min(m1, D), r0 = max(m0, D) - D, r1 = max(m1, D) - D
    cdef Py_ssize_t s, bb, t, lo, hi, n_steps, pos, g, j
    cdef Py_ssize_t off[5]
    cdef int cell = S.cell, isa = S.isa
    cdef bint reset_before = cell == GRU and not S.reset_after, relu = S.relu, reverse = S.reverse
    cdef const int64_t* lengths = S.lengths
    cdef char* mine = S.scratch + k * S.stride
    _back_offsets(S, sizeof(floating), off)
    cdef const floating* RTp = <const floating*> (mine + off[0])
    cdef const floating* RhTp = RTp + packed_size(2 * U, nu, sizeof(floating))  # reset_before: R_h's rows
    cdef const floating* WTp = <const floating*> (mine + off[1])
    cdef floating* dhr = <floating*> (mine + off[2])
    cdef floating* wg = <floating*> (mine + off[3])
    cdef double* acc = <double*> (mine + off[4])
    cdef const floating* x = <const floating*> S.x
    cdef const floating* ws_hprev = <const floating*> S.ws[0]
    cdef const floating* ws1 = <const floating*> S.ws[1]
    cdef const floating* ws2 = <const floating*> S.ws[2]
    cdef const floating* ws3 = <const floating*> S.ws[3]
    cdef const floating* dy = <const floating*> S.dy
    cdef floating* dh = <floating*> S.dh
    cdef floating* dc = <floating*> S.dc
    cdef floating* du = <floating*> S.du
    cdef floating* dv = <floating*> S.dv
    cdef floating* rh = <floating*> S.rh
    cdef floating* dx = <floating*> S.dx
    cdef floating* dW = <floating*> S.dW
    cdef floating* dR = <floating*> S.dR
    cdef floating* buf
    cdef floating* brow
    cdef long long st_first[FR_NSTAT]
    cdef long long st_rest[FR_NSTAT]
    cdef long long* st = st_first
    memset(st_first, 0, sizeof(st_first))
    memset(st_rest, 0, sizeof(st_rest))
    cdef long long t_loop = 0
    cdef unsigned int fp_mode = flush_denormals()
    cdef long long prepared = _prepare_all(S.prep, S.n, k,
                                           _prepare_backward_f32 if floating is float else _prepare_backward_f64, S)

    n_steps = max_length(lengths, B)
    for s in range(n_steps - 1, -1, -1):
        buf = <floating*> S.dstep + (s & 1) * B * GU
        active_rows(lengths, B, s, &lo, &hi)
        # the gate gradients of its units (fused_blas rows), into the step's buffer and every position's du (dv)
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            brow = buf + bb * GU + u0
            if cell == LSTM:
                lstm_backward_row(ws2 + pos * GU + u0, ws1 + pos * U + u0, ws3 + pos * U + u0, dy + pos * U + u0,
                                  dh + bb * U + u0, dc + bb * U + u0, brow, nu, U)
                for g in range(4):
                    memcpy(du + pos * GU + g * U + u0, brow + g * U, nu * sizeof(floating))
            elif cell == SIMPLE:
                simple_rnn_backward_row(ws1 + pos * U + u0, dy + pos * U + u0, dh + bb * U + u0, brow, nu, relu)
                memcpy(du + pos * GU + u0, brow, nu * sizeof(floating))
            elif not reset_before:
                gru_backward_row(ws1 + pos * GU + u0, ws_hprev + pos * U + u0, ws2 + pos * U + u0,
                                 dy + pos * U + u0, dh + bb * U + u0, du + pos * GU + u0, brow, nu, U)
                for g in range(3):
                    memcpy(dv + pos * GU + g * U + u0, brow + g * U, nu * sizeof(floating))
            else:
                gru_reset_backward_row1(ws1 + pos * GU + u0, ws_hprev + pos * U + u0, dy + pos * U + u0,
                                        dh + bb * U + u0, brow, nu, U)
                for j in range(nu):   # r * h_prev, dR's h block reads it after the loop
                    rh[pos * U + u0 + j] = ws1[pos * GU + U + u0 + j] * ws_hprev[pos * U + u0 + j]
        if reset_before:
            # d(r * h_prev) of its units needs every unit's da_h: a barrier, then da_h @ R_h[own rows].T
            fr_barrier_wait(&S.bar, st)
            if st == st_first:
                t_loop = fr_now_ns()
            st = st_rest
            packed_matmul(hi - lo, U, buf + lo * GU + 2 * U, GU, RhTp, nu, dhr + lo * nu, nu, isa,
                          panels_backward(s, hi - lo))
            for bb in range(lo, hi):
                if lengths[bb] <= s:
                    continue
                t = position(s, lengths[bb], reverse)
                pos = bb * T + t
                brow = buf + bb * GU + u0
                gru_reset_backward_row2(ws1 + pos * GU + u0, ws_hprev + pos * U + u0, dhr + bb * nu,
                                        dh + bb * U + u0, brow, nu, U)
                for g in range(3):
                    memcpy(du + pos * GU + g * U + u0, brow + g * U, nu * sizeof(floating))
        # Every thread's part of the step's gradients is written before anyone reads them
        fr_barrier_wait(&S.bar, st)
        if st == st_first:
            t_loop = fr_now_ns()
        st = st_rest
        # dh_{t-1} of its units = the step's gradients @ R[own rows, :].T (reset_after=False: the z, r columns)
        packed_matmul(hi - lo, 2 * U if reset_before else GU, buf + lo * GU, GU, RTp, nu, dhr + lo * nu, nu, isa,
                      panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            if cell == GRU:   # added to the direct path (and the reset path) the rows left in dh
                for j in range(nu):
                    dh[bb * U + u0 + j] += dhr[bb * nu + j]
            else:
                memcpy(dh + bb * U + u0, dhr + bb * nu, nu * sizeof(floating))

    # Every position's gradients are written before the products over all positions read them
    fr_barrier_wait(&S.bar, st)
    if t_loop:
        st_rest[5] = fr_now_ns() - t_loop
    # dW = x^T du and dR = h_prev^T dv, its rows of each
    if cell != GRU:
        if m1 > m0:
            weight_grads(BT, GU, du, GU, w1 - w0, x + w0, D, dW + w0 * GU,
                         r1 - r0, ws_hprev + r0 if r1 > r0 else NULL, U, dR + r0 * GU, GU, wg, isa)
    else:
        if w1 > w0:
            weight_grads(BT, GU, du, GU, w1 - w0, x + w0, D, dW + w0 * GU, 0, NULL, 0, NULL, GU, wg, isa)
        if r1 > r0 and not reset_before:
            weight_grads(BT, GU, dv, GU, r1 - r0, ws_hprev + r0, U, dR + r0 * GU, 0, NULL, 0, NULL, GU, wg, isa)
        elif r1 > r0:   # dR[:, :2U] = h_prev^T du[:, :2U], dR[:, 2U:] = (r * h_prev)^T du[:, 2U:]
            weight_grads(BT, 2 * U, du, GU, r1 - r0, ws_hprev + r0, U, dR + r0 * GU, 0, NULL, 0, NULL, GU, wg,
                         isa)
            weight_grads(BT, U, du + 2 * U, GU, r1 - r0, rh + r0, U, dR + r0 * GU + 2 * U, 0, NULL, 0, NULL,
                         GU, wg, isa)
    # dx = du W.T, its columns; zero at padded positions (0 already unless W holds inf / NaN)
    if nd > 0:
        packed_matmul(BT, GU, du, GU, WTp, nd, dx + d0, D, isa)
        for bb in range(B):
            for t in range(lengths[bb], T):
                memset(dx + (bb * T + t) * D + d0, 0, nd * sizeof(floating))
    # db (and db_rec): the sums of its units' gate columns
    for g in range(G):
        column_sums(du + g * U + u0, BT, nu, GU, acc, <floating*> S.db_in + g * U + u0)
        if S.db_rec != NULL:
            column_sums(dv + g * U + u0, BT, nu, GU, acc, <floating*> S.db_rec + g * U + u0)

    _put_thread_stats(S.stats, k, st_rest, st_first, prepared)
    restore_fp_mode(fp_mode)


cdef void _task_backward_f32(void* ctx, int k) noexcept nogil:
    _thread_backward(<float*> NULL, <BackShared*> ctx, k)


cdef void _task_backward_f64(void* ctx, int k) noexcept nogil:
    _thread_backward(<double*> NULL, <BackShared*> ctx, k)


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------

def split_units(Py_ssize_t U, int n, Py_ssize_t itemsize=4):
    """Unit boundaries [0, u1, ..., U] of min(n, U) threads, about equal; with enough units the inner boundaries
    are multiples of 64 bytes of elements (no cache line of h, c or y is written by two threads)."""
    n = max(1, min(n, U, FR_MAX_THREADS))
    cdef Py_ssize_t q = 64 // itemsize
    if U < 2 * n * q:
        q = 1
    bounds = [0]
    for k in range(1, n):
        bounds.append(int(round(k * U / n / q)) * q)
    bounds.append(U)
    return bounds


def isa():
    """The instruction set the matmuls use here: 'avx512', 'avx2' or 'baseline'."""
    return ("baseline", "avx2", "avx512")[fr_isa()]


def _parallel_capsule():
    """fr_parallel (this module's kept pool) for the whole-batch kernels' row blocks (array_args.row_pool)."""
    return PyCapsule_New(<void*> fr_parallel, b"fastrnn.fr_parallel", NULL)


def _set_fail_thread(int k):
    """Tests: make starting thread k (>= 1) fail, as if the system refused; 0 restores. Returns the previous value."""
    global fr_fail_thread
    old = fr_fail_thread
    fr_fail_thread = k
    return old


def set_isa_cap(int level):
    """Cap the instruction set (2 AVX-512, 1 AVX2, 0 baseline) of this module's matmuls, for tests; returns the
    previous cap."""
    return fr_set_isa_cap(level)


cdef Py_ssize_t _split_panels(list bounds, Py_ssize_t D, Py_ssize_t U, Py_ssize_t G, bint reset_before,
                              Py_ssize_t item, Py_ssize_t* sizes) except -1:
    """For a call whose threads own the units between `bounds` (split_units): sizes receives the elements of the
    widest thread's packed W and R, and the bytes of one thread's region of pack_split's array. Returns the
    widest thread's units."""
    cdef Py_ssize_t k, nu_max = 0
    for k in range(len(bounds) - 1):
        nu_max = max(nu_max, bounds[k + 1] - bounds[k])
    sizes[0] = packed_size(D, G * nu_max, item)
    sizes[1] = (packed_size(U, 2 * nu_max, item) + packed_size(U, nu_max, item) if reset_before
                else packed_size(U, G * nu_max, item))
    sizes[2] = _round64(sizes[0] * item) + _round64(sizes[1] * item)
    return nu_max


cdef enum:
    PACKED_HEADER = 64     # bytes before pack_split's regions: int64 PACKED_MAGIC, threads, D, U, G, reset_before,
    PACKED_MAGIC = 0x66725370  # itemsize


def pack_split(const floating[:, ::1] W, const floating[:, ::1] R, int n_threads, bint reset_before=False):
    """W (D, G*U) and R (U, G*U) packed once for forward calls on n_threads threads (each thread's columns,
    split_units), for the forward entries' `packed`: such a call packs nothing itself (kernels/README.md, "Packed
    weights"). A uint8 array starting at a 64-byte boundary: a header (threads, shapes, dtype: checked by the
    call), then one region per thread. reset_before: GRU with reset_after=False (R's h columns packed apart)."""
    cdef Py_ssize_t U = R.shape[0], D = W.shape[0], item = sizeof(floating)
    if U < 1 or R.shape[1] % U or W.shape[1] != R.shape[1]:
        raise ValueError(f"W and R must be (D, G*U) and (U, G*U); got shapes {tuple(W.shape)[:2]} and "
                         f"{tuple(R.shape)[:2]}")
    cdef Py_ssize_t G = R.shape[1] // U
    cdef Py_ssize_t sizes[3]
    bounds = split_units(U, n_threads, item)
    cdef int n = len(bounds) - 1
    _split_panels(bounds, D, U, G, reset_before, item, sizes)
    raw = np.zeros(PACKED_HEADER + n * sizes[2] + 64, np.uint8)
    cdef Py_ssize_t skip = (64 - <uintptr_t> raw.ctypes.data % 64) % 64
    out = raw[skip:skip + PACKED_HEADER + n * sizes[2]]
    out[:PACKED_HEADER].view(np.int64)[:7] = (PACKED_MAGIC, n, D, U, G, reset_before, item)
    cdef char* base = <char*> <uintptr_t> out.ctypes.data + PACKED_HEADER
    cdef int k
    cdef Py_ssize_t u0, nu
    for k in range(n):
        u0, nu = bounds[k], bounds[k + 1] - bounds[k]
        with nogil:
            _pack_share(&W[0, 0], &R[0, 0], reset_before, D, U, G, u0, nu, <floating*> (base + k * sizes[2]),
                        <floating*> (base + k * sizes[2] + _round64(sizes[0] * item)))
    return out


cdef const char* _packed_regions(packed, int n, Py_ssize_t D, Py_ssize_t U, Py_ssize_t G, bint reset_before,
                                 Py_ssize_t item, Py_ssize_t stride) except NULL:
    """The regions of `packed` (pack_split's array), checked against the call: its header, size and alignment."""
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1 \
            or not packed.flags.c_contiguous:
        raise TypeError(f"packed must be pack_split's array or None; got {type(packed).__name__}")
    header = tuple(packed[:PACKED_HEADER].view(np.int64)[:7].tolist()) if packed.size >= PACKED_HEADER else ()
    if header[:1] != (PACKED_MAGIC,):
        raise ValueError("packed must be pack_split's array; its header is missing")
    if header != (PACKED_MAGIC, n, D, U, G, reset_before, item):
        raise ValueError(f"packed was made for (threads, D, U, gates, reset_before, itemsize) = {header[1:]}; this "
                         f"call has {(n, D, U, G, int(reset_before), item)}")
    if packed.size != PACKED_HEADER + n * stride or packed.ctypes.data % 64:
        raise ValueError("packed must be pack_split's array as it made it (a copy may start off a 64-byte "
                         "boundary): pack the weights again")
    return <const char*> <uintptr_t> packed.ctypes.data + PACKED_HEADER


def _scratch_block(Py_ssize_t nbytes):
    """The threads' scratch: from KEEP_SCRATCH_BYTES the calling thread's kept block (no page faults: see
    fastrnn.kernels.kept_scratch), else a new array."""
    return kept_scratch(nbytes) if nbytes >= KEEP_SCRATCH_BYTES else np.empty(nbytes, np.uint8)


cdef object _run(int cell, const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                 const floating* b_in, const floating* b_rec, const floating[:, ::1] h0, const floating* c0,
                 const int64_t[::1] lengths, bint reverse, bint relu, bint reset_after,
                 floating[:, :, ::1] y, floating[:, ::1] hT, floating* cT, int n_threads, stats, workspaces,
                 packed=None):
    cdef Shared S
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], D = x.shape[2], U = R.shape[0]
    cdef Py_ssize_t G = R.shape[1] // U, k, item = sizeof(floating)
    cdef Py_ssize_t off[6]
    cdef Py_ssize_t sizes[3]
    dtype = np.float32 if floating is float else np.float64
    bounds = split_units(U, n_threads, item)
    cdef int n = len(bounds) - 1
    cdef Py_ssize_t[::1] ub = np.asarray(bounds, np.intp)
    cdef bint reset_before = cell == GRU and not reset_after
    cdef Py_ssize_t nu_max = _split_panels(bounds, D, U, G, reset_before, item, sizes)
    S.n_panel_W = sizes[0]
    S.n_panel_R = sizes[1]
    S.packed = NULL
    S.packed_stride = sizes[2]
    if packed is not None:
        S.packed = _packed_regions(packed, n, D, U, G, reset_before, item, sizes[2])
    S.B, S.T = B, T
    S.stride = _scratch_offsets(&S, item, G * nu_max, off)
    S.stride = (S.stride + 4095) // 4096 * 4096 + 64 * 3  # regions of different threads share no page
    cdef unsigned char[::1] scratch = _scratch_block(n * S.stride + 64)
    cdef uintptr_t base = <uintptr_t> &scratch[0]
    cdef long long[:, ::1] stat = np.zeros((n, 2 * FR_NSTAT), np.int64)
    cdef unsigned int[::1] prep = np.zeros(n, np.uintc)
    hbuf = np.empty((2, B, U), dtype)
    rh = np.zeros((B if reset_before else 1, U), dtype)
    cdef floating[:, :, ::1] hb = hbuf
    cdef floating[:, ::1] rhv = rh
    S.scratch = <char*> ((base + 63) // 64 * 64)
    S.cell, S.n, S.isa = cell, n, fr_isa()
    S.relu, S.reverse, S.reset_after = relu, reverse, reset_after
    S.B, S.T, S.D, S.U, S.G = B, T, D, U, G
    S.x, S.W, S.R, S.b_in, S.b_rec, S.h0, S.c0 = &x[0, 0, 0], &W[0, 0], &R[0, 0], b_in, b_rec, &h0[0, 0], c0
    S.lengths = &lengths[0]
    S.y, S.hT, S.cT = &y[0, 0, 0], &hT[0, 0], cT
    S.hbuf, S.rh = &hb[0, 0, 0], &rhv[0, 0]
    cdef floating[:, :, ::1] wv
    cdef int w
    for w in range(4):
        S.ws[w] = NULL
    if workspaces is not None:  # training (the caller checked their shapes)
        for w in range(len(workspaces)):
            if not (reset_before and w == 2):  # GRU reset_after=False does not use ws_vh
                wv = workspaces[w]
                S.ws[w] = &wv[0, 0, 0]
    S.ubound = &ub[0]
    S.stats = &stat[0, 0]
    S.prep = &prep[0]
    fr_barrier_init(&S.bar, n)
    cdef int status
    with nogil:
        if floating is float:
            status = fr_parallel(n, _task_f32, &S)
        else:
            status = fr_parallel(n, _task_f64, &S)
    if stats is not None:
        _put_stats(stats, np.asarray(stat), n, bounds)
    return -1 if status != 0 else n


def _put_stats(stats, st, n, bounds):
    """The kernel's counters (n, 2 * FR_NSTAT) into the dict `stats`: per thread; the first barrier wait (which
    also waits for the other threads to start) apart."""
    F = FR_NSTAT
    stats.update(threads=n, bounds=bounds, waits=st[:, 0].tolist(), spins=st[:, 1].tolist(),
                 yields=st[:, 2].tolist(), sleeps=st[:, 3].tolist(), wait_ns=st[:, 4].tolist(),
                 loop_ns=st[:, 5].tolist(), prepared=st[:, F].tolist(), first_spins=st[:, F + 1].tolist(),
                 first_yields=st[:, F + 2].tolist(), first_sleeps=st[:, F + 3].tolist(),
                 first_wait_ns=st[:, F + 4].tolist())


def simple_rnn_forward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                       const floating[::1] b, const floating[:, ::1] h0, const int64_t[::1] lengths,
                       bint reverse, bint relu, floating[:, :, ::1] y, floating[:, ::1] hT, int n_threads,
                       stats=None, workspaces=None, packed=None):
    return _run(SIMPLE, x, W, R, &b[0], <const floating*> NULL, h0, <const floating*> NULL, lengths, reverse, relu,
                False, y, hT, <floating*> NULL, n_threads, stats, workspaces, packed)


def lstm_forward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                 const floating[::1] b, const floating[:, ::1] h0, const floating[:, ::1] c0,
                 const int64_t[::1] lengths, bint reverse, floating[:, :, ::1] y, floating[:, ::1] hT,
                 floating[:, ::1] cT, int n_threads, stats=None, workspaces=None, packed=None):
    return _run(LSTM, x, W, R, &b[0], <const floating*> NULL, h0, &c0[0, 0], lengths, reverse, False, False,
                y, hT, &cT[0, 0], n_threads, stats, workspaces, packed)


def gru_forward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                const floating[::1] b_in, const floating[::1] b_rec, const floating[:, ::1] h0,
                const int64_t[::1] lengths, bint reverse, bint reset_after, floating[:, :, ::1] y,
                floating[:, ::1] hT, int n_threads, stats=None, workspaces=None, packed=None):
    return _run(GRU, x, W, R, &b_in[0], &b_rec[0] if reset_after else <const floating*> NULL, h0,
                <const floating*> NULL, lengths, reverse, False, reset_after, y, hT, <floating*> NULL, n_threads,
                stats, workspaces, packed)


def split_rows(Py_ssize_t D, Py_ssize_t U, int n):
    """Boundaries [0, m1, ..., D + U] of n threads' rows of the stacked [dW; dR] (D + U rows, each as much work),
    about equal; inside dW and inside dR every boundary is a multiple of 4 rows from the matrix's first row (the
    matmul's row block, so that each row's sums run as with one thread)."""
    cdef Py_ssize_t M = D + U, m, prev = 0
    bounds = [0]
    for k in range(1, n):
        m = int(round(k * M / n))
        m = min(D, int(round(m / 4)) * 4) if m < D else D + min(U, int(round((m - D) / 4)) * 4)
        prev = max(m, prev)
        bounds.append(prev)
    bounds.append(M)
    return bounds


cdef object _run_backward(int cell, const floating[:, :, ::1] x, const floating[:, ::1] W,
                          const floating[:, ::1] R, const int64_t[::1] lengths, bint reverse, bint relu,
                          bint reset_after, tuple workspaces, const floating[:, :, ::1] dy,
                          const floating[:, ::1] dhT, const floating* dcT, floating[:, :, ::1] dx,
                          floating[:, ::1] dh0, floating* dc0, floating[:, ::1] dW, floating[:, ::1] dR,
                          floating[::1] db_in, floating* db_rec, int n_threads, stats):
    cdef BackShared S
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], D = x.shape[2], U = R.shape[0]
    cdef Py_ssize_t G = R.shape[1] // U, GU = R.shape[1], k, item = sizeof(floating), nd_max = 0, m_max = 0
    cdef Py_ssize_t off[5]
    dtype = np.float32 if floating is float else np.float64
    ubounds = split_units(U, n_threads, item)
    cdef int n = len(ubounds) - 1
    dbounds = split_units(D, n, item) if D >= n else list(range(D + 1)) + [D] * (n - D)
    mbounds = split_rows(D, U, n)
    cdef Py_ssize_t[::1] ub = np.asarray(ubounds, np.intp)
    cdef Py_ssize_t[::1] dbv = np.asarray(dbounds, np.intp)
    cdef Py_ssize_t[::1] mb = np.asarray(mbounds, np.intp)
    S.nu_max = 0
    for k in range(n):
        S.nu_max = max(S.nu_max, ubounds[k + 1] - ubounds[k])
        nd_max = max(nd_max, dbounds[k + 1] - dbounds[k])
        m0, m1 = mbounds[k], mbounds[k + 1]
        m_max = max(m_max, min(m1, D) - min(m0, D), max(m1, D) - max(m0, D))
    cdef bint reset_before = cell == GRU and not reset_after
    S.B, S.T, S.D, S.U, S.G = B, T, D, U, G
    S.n_panel_R = (packed_size(2 * U, S.nu_max, item) + packed_size(U, S.nu_max, item) if reset_before
                   else packed_size(GU, S.nu_max, item))
    S.n_panel_W = packed_size(GU, nd_max, item)
    S.n_work = weight_grads_work(max(m_max, 1), GU, B * T, item)
    S.stride = _back_offsets(&S, item, off)
    S.stride = (S.stride + 4095) // 4096 * 4096 + 64 * 3  # regions of different threads share no page
    cdef unsigned char[::1] scratch = _scratch_block(n * S.stride + 64)
    cdef uintptr_t base = <uintptr_t> &scratch[0]
    cdef long long[:, ::1] stat = np.zeros((n, 2 * FR_NSTAT), np.int64)
    cdef unsigned int[::1] prep = np.zeros(n, np.uintc)
    # every position's gradients (dv apart only for GRU reset_after=True), r * h_prev, the step buffers
    cdef floating[:, ::1] du = np.empty((B * T, GU), dtype)
    cdef floating[:, ::1] dv = np.empty((B * T if cell == GRU and reset_after else 1, GU), dtype)
    cdef floating[:, ::1] rh = np.empty((B * T if reset_before else 1, U), dtype)
    cdef floating[:, :, ::1] dstep = np.zeros((2, B, GU), dtype)
    # x with zeros at padded positions for dW (fused_blas.active_inputs), only when some row is padded
    cdef bint padded = has_padding(&lengths[0], B, T)
    cdef floating[:, :, ::1] x_active = np.empty((B if padded else 1, T if padded else 1, D if padded else 1),
                                                 dtype)
    cdef const floating[:, :, ::1] wv
    cdef int w
    S.scratch = <char*> ((base + 63) // 64 * 64)
    S.cell, S.n, S.isa = cell, n, fr_isa()
    S.relu, S.reverse, S.reset_after = relu, reverse, reset_after
    S.x = active_inputs(&x[0, 0, 0], &lengths[0], B, T, D, &x_active[0, 0, 0] if padded else NULL)
    S.W, S.R, S.lengths = &W[0, 0], &R[0, 0], &lengths[0]
    for w in range(4):
        S.ws[w] = NULL
    for w in range(len(workspaces)):
        if not (reset_before and w == 2):  # GRU reset_after=False does not use ws_vh
            wv = workspaces[w]
            S.ws[w] = &wv[0, 0, 0]
    S.dy, S.dhT, S.dcT = &dy[0, 0, 0], &dhT[0, 0], dcT
    S.dx, S.dh, S.dc, S.dW, S.dR = &dx[0, 0, 0], &dh0[0, 0], dc0, &dW[0, 0], &dR[0, 0]
    S.db_in, S.db_rec = &db_in[0], db_rec
    S.du = &du[0, 0]
    S.dv = &dv[0, 0] if cell == GRU and reset_after else &du[0, 0]
    S.rh = &rh[0, 0] if reset_before else NULL
    S.dstep = &dstep[0, 0, 0]
    S.ubound, S.dbound, S.mbound = &ub[0], &dbv[0], &mb[0]
    S.stats = &stat[0, 0]
    S.prep = &prep[0]
    fr_barrier_init(&S.bar, n)
    cdef int status
    with nogil:
        if floating is float:
            status = fr_parallel(n, _task_backward_f32, &S)
        else:
            status = fr_parallel(n, _task_backward_f64, &S)
    if stats is not None:
        _put_stats(stats, np.asarray(stat), n, ubounds)
    return -1 if status != 0 else n


def simple_rnn_backward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                        const int64_t[::1] lengths, bint reverse, bint relu, ws_hprev, ws_h,
                        const floating[:, :, ::1] dy, const floating[:, ::1] dhT, floating[:, :, ::1] dx,
                        floating[:, ::1] dh0, floating[:, ::1] dW, floating[:, ::1] dR, floating[::1] db,
                        int n_threads, stats=None):
    return _run_backward(SIMPLE, x, W, R, lengths, reverse, relu, False, (ws_hprev, ws_h), dy, dhT,
                         <const floating*> NULL, dx, dh0, <floating*> NULL, dW, dR, db, <floating*> NULL,
                         n_threads, stats)


def lstm_backward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                  const int64_t[::1] lengths, bint reverse, ws_hprev, ws_cprev, ws_gates, ws_c,
                  const floating[:, :, ::1] dy, const floating[:, ::1] dhT, const floating[:, ::1] dcT,
                  floating[:, :, ::1] dx, floating[:, ::1] dh0, floating[:, ::1] dc0, floating[:, ::1] dW,
                  floating[:, ::1] dR, floating[::1] db, int n_threads, stats=None):
    return _run_backward(LSTM, x, W, R, lengths, reverse, False, False, (ws_hprev, ws_cprev, ws_gates, ws_c), dy,
                         dhT, &dcT[0, 0], dx, dh0, &dc0[0, 0], dW, dR, db, <floating*> NULL, n_threads, stats)


def gru_backward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                 const int64_t[::1] lengths, bint reverse, bint reset_after, ws_hprev, ws_gates, ws_vh,
                 const floating[:, :, ::1] dy, const floating[:, ::1] dhT, floating[:, :, ::1] dx,
                 floating[:, ::1] dh0, floating[:, ::1] dW, floating[:, ::1] dR, floating[::1] db_in,
                 floating[::1] db_rec, int n_threads, stats=None):
    status = _run_backward(GRU, x, W, R, lengths, reverse, False, reset_after, (ws_hprev, ws_gates, ws_vh), dy,
                           dhT, <const floating*> NULL, dx, dh0, <floating*> NULL, dW, dR, db_in,
                           &db_rec[0] if reset_after else <floating*> NULL, n_threads, stats)
    if not reset_after:
        db_rec[:] = 0
    return status


def _matmul_check(const floating[:, ::1] A, const floating[:, ::1] Bm, int reps=1, int isa_level=-1,
                  bint backward=False):
    """A @ Bm through the packed-panel matmul (tests and benchmarks): Bm packed once, the product run reps times
    (backward: its panels last to first). Returns (C, seconds per product)."""
    import time
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = Bm.shape[1]
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] P = np.empty(packed_elements(K, N, sizeof(floating)), dtype)
    cdef floating* Pa = aligned64(&P[0])
    C = np.empty((M, N), dtype)
    cdef floating[:, ::1] Cv = C
    cdef int r, level = fr_isa() if isa_level < 0 else isa_level
    if K > 0:
        pack(&Bm[0, 0], N, K, N, Pa)
    t0 = time.perf_counter()
    with nogil:
        for r in range(reps):
            packed_matmul(<int> M, <int> K, &A[0, 0], K, Pa, <int> N, &Cv[0, 0], N, level, backward)
    return C, (time.perf_counter() - t0) / max(reps, 1)


def _weight_grads_check(const floating[:, ::1] A1, const floating[:, ::1] dZ, A2=None, int isa_level=-1):
    """(A1^T @ dZ, A2^T @ dZ or None) through fused_blas.weight_grads (tests; the backward kernels' dW, dR)."""
    cdef Py_ssize_t K = dZ.shape[0], N = dZ.shape[1], M1 = A1.shape[1], M2 = 0
    dtype = np.float32 if floating is float else np.float64
    cdef const floating[:, ::1] a2 = A2 if A2 is not None else np.empty((1, 1), dtype)
    if A2 is not None:
        M2 = a2.shape[1]
    if A1.shape[0] != K or a2.shape[0] != (K if A2 is not None else 1):
        raise ValueError("A1, A2 and dZ must have the same number of rows")
    C1 = np.full((M1, N), np.nan, dtype)   # NaN: the result must not depend on what C held
    C2 = np.full((max(M2, 1), N), np.nan, dtype)
    cdef floating[:, ::1] c1 = C1, c2 = C2
    cdef floating[::1] work = np.empty(weight_grads_work(max(M1, M2), N, K, sizeof(floating)), dtype)
    cdef int level = fr_isa() if isa_level < 0 else isa_level
    # With K = 0 nothing is read: any non-NULL pointer stands for the empty operands (NULL A2 means "no A2").
    cdef const floating* empty = &work[0]
    with nogil:
        weight_grads(K, N, &dZ[0, 0] if K else empty, N, M1, &A1[0, 0] if K else empty, M1, &c1[0, 0],
                     M2, (&a2[0, 0] if K else empty) if M2 else NULL, M2, &c2[0, 0], N, &work[0], level)
    return C1, (C2[:M2] if A2 is not None else None)


cdef struct _BarrierBench:
    int rounds
    long long* stats
    fr_barrier bar


cdef void _barrier_task(void* ctx, int k) noexcept nogil:
    cdef _BarrierBench* c = <_BarrierBench*> ctx
    cdef int r
    cdef long long st[FR_NSTAT]
    memset(st, 0, sizeof(st))
    for r in range(c.rounds):
        fr_barrier_wait(&c.bar, st)
    memcpy(c.stats + FR_NSTAT * k, st, sizeof(st))


def _barrier_bench(int n, int rounds):
    """n threads pass the barrier `rounds` times with no work in between (benchmarks): returns (seconds per
    barrier including the threads' start and join spread over the rounds, {stats})."""
    import time
    cdef _BarrierBench c
    cdef long long[:, ::1] stat = np.zeros((n, FR_NSTAT), np.int64)
    c.rounds = rounds
    c.stats = &stat[0, 0]
    fr_barrier_init(&c.bar, n)
    cdef int status
    t0 = time.perf_counter()
    with nogil:
        status = fr_parallel(n, _barrier_task, &c)
    dt = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError("could not start threads")
    st = np.asarray(stat)
    return dt / max(rounds, 1), dict(waits=st[:, 0].tolist(), spins=st[:, 1].tolist(), yields=st[:, 2].tolist(),
                                      sleeps=st[:, 3].tolist(), wait_ns=st[:, 4].tolist())
