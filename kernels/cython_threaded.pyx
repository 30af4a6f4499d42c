# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Inference at small batch on several cores: each thread owns a slice of the units (gate columns).

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

Threads: POSIX threads started per call (n - 1 of them; the calling thread is thread 0), each on another CPU
than the caller's, and finished before the call returns (fr_parallel). Starting one costs ~30-40 us here (waking
the idle core), which the calling thread spends on the preparation of threads that have not started yet
(packing, projection: _prepare is claimed by whichever thread gets to it first). The barrier spins on a GCC
__atomic counter: PAUSE, then sched_yield(), then short sleeps (fr_wait): 40-130 ns per barrier here between
two threads doing nothing else, 100-350 ns per step inside the kernel (the barrier, and h's cache lines changing
cores; measured at 2-32 units, where a step has almost no work). Each thread sets FTZ/DAZ for itself and
restores its mode before leaving (fused_blas.pxd, "Denormals").

Entry points mirror the inference half of the kernel contract (kernels/README.md), plus n_threads and stats:

    simple_rnn_forward(x, W, R, b, h0, lengths, reverse, relu, y, hT, n_threads, stats=None)
    lstm_forward(x, W, R, b, h0, c0, lengths, reverse, y, hT, cT, n_threads, stats=None)
    gru_forward(x, W, R, b_in, b_rec, h0, lengths, reverse, reset_after, y, hT, n_threads, stats=None)

Each returns the number of threads it ran on (min(n_threads, units)), or -1 if the system refused to start a
thread: then the outputs are incomplete, and the caller runs it again on 1 thread (which starts none).
`stats`: None, or a dict that receives per-thread counters (unit bounds, barrier waits, PAUSE rounds, yields,
sleeps, nanoseconds waited; the first wait, which also waits for the threads to start, apart). Arrays as in the
contract (C-contiguous, one float dtype, int64 lengths; for GRU reset_after=False b_rec is not read); validation
is the caller's (fastrnn._column_split, called by ops).
"""
import numpy as np

from cython cimport floating
from libc.stdint cimport int64_t, uintptr_t
from libc.string cimport memcpy, memset

from fused_blas cimport (active_rows, aligned64, flush_denormals, fr_isa, fr_set_isa_cap, gru_gates_row, gru_row,
                         gru_state_row, lstm_row, max_length, pack, pack_gate_columns, packed_elements, packed_matmul,
                         packed_size, position, restore_fp_mode, simple_rnn_row, weight_grads, weight_grads_work)


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
       abort (may be NULL): when *abort becomes nonzero, returns 1 at once (else 0).
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

    static int fr_wait(const unsigned int* word, unsigned int value, const int* abort, long long* st) {
        long long spins = 0, yields = 0, sleeps = 0, t0 = 0;
        if (FR_LOAD(word) == value) {
            if (st)
                t0 = fr_now_ns();
            while (FR_LOAD(word) == value) {
                if (abort && FR_LOAD(abort))
                    return 1;
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
        return 0;
    }

    /* ---------------------------------------------------------------------------------------------------------
       Barrier: n threads, reusable. `count` counts arrivals in the current phase, `phase` numbers the phases.
       The last thread to arrive resets count and advances phase (release); the others wait for phase to move
       (acquire). So every write a thread made before the barrier is visible to every thread after it.
       fr_barrier_wait returns 0, or 1 if the call was aborted (fr_parallel could not start every thread).
       --------------------------------------------------------------------------------------------------------- */
    typedef struct {
        int n;
        unsigned int count;
        unsigned int phase;
        int abort;
    } FR_ALIGN64 fr_barrier;  /* a cache line of its own */

    static void fr_barrier_init(fr_barrier* b, int n) {
        b->n = n; b->count = 0; b->phase = 0; b->abort = 0;
    }

    static int fr_barrier_wait(fr_barrier* b, long long* st) {
        unsigned int ph = FR_LOAD(&b->phase);
        if (b->n <= 1)
            return 0;
        if (FR_ADD(&b->count, 1u) == (unsigned int) b->n) {
            FR_STORE_RELAXED(&b->count, 0u);
            FR_STORE(&b->phase, ph + 1u);
            if (st)
                st[0] += 1;
            return 0;
        }
        return fr_wait(&b->phase, ph, &b->abort, st);
    }

    /* Work items that one thread claims and others may wait for: 0 free, 1 claimed, 2 done. */
    static int fr_claim(unsigned int* item) {
        unsigned int expected = 0;
        return FR_CAS(item, &expected, 1u);
    }

    static void fr_release(unsigned int* item) { FR_STORE(item, 2u); }

    /* Wait until the item is done; returns 1 if the barrier b was aborted meanwhile. */
    static int fr_wait_done(unsigned int* item, fr_barrier* b) {
        unsigned int v;
        while ((v = FR_LOAD(item)) != 2u)
            if (fr_wait(item, v, &b->abort, NULL))
                return 1;
        return 0;
    }

    /* ---------------------------------------------------------------------------------------------------------
       fr_parallel(n, fn, ctx, barrier): fn(ctx, k) for k = 0..n-1 on n threads (k = 0 on the calling thread);
       returns when all have finished. No start barrier: each thread starts on its own work at once, so that
       starting a thread (~50-150 us on this VM, mostly waking the idle core) overlaps the calling thread's work.
       The threads are detached and count themselves out in `finished` as their last access to the caller's
       memory; the caller waits for that count (spinning, like a barrier) instead of pthread_join, which would
       sleep until the thread has exited and then take as long to wake up. Each starts on another CPU than the
       caller's (FR_PIN_START).
       Returns 0, or -1 when a thread could not be started: then the barrier is aborted (threads waiting in it,
       or arriving later, leave fn early), the outputs are incomplete and the caller must compute them otherwise.
       --------------------------------------------------------------------------------------------------------- */
    typedef void (*fr_task)(void* ctx, int k);

    /* Linux starts a new thread on its creator's CPU (measured here in most runs: both threads then share one
       core until the scheduler moves one, milliseconds later, and 1000 barriers took 16-48 ms instead of
       0.1-0.4 ms). So each thread starts pinned to a CPU other than the caller's (the allowed CPUs after the
       caller's, in turn), and unpins itself at once: a starting place, not a binding. */
    #if FR_HAVE_PTHREADS && defined(__linux__) && defined(_GNU_SOURCE) && defined(CPU_SETSIZE)
    #define FR_PIN_START 1
    #else
    #define FR_PIN_START 0
    #endif

    typedef struct { fr_task fn; void* ctx; int k; unsigned int* finished; const void* allowed; } fr_thread_arg;

    #define FR_MAX_THREADS 256

    /* Tests: pretend that starting thread k fails when k == fr_fail_thread (0: never). */
    static int fr_fail_thread = 0;

    static void* fr_trampoline(void* p) {
        fr_thread_arg a = *(fr_thread_arg*) p;  /* p is on the caller's stack: copied before anything else */
    #if FR_PIN_START
        if (a.allowed)  /* started on a CPU of its own (fr_parallel); from now on the scheduler's choice again */
            pthread_setaffinity_np(pthread_self(), sizeof(cpu_set_t), (const cpu_set_t*) a.allowed);
    #endif
        a.fn(a.ctx, a.k);
        FR_ADD(a.finished, 1u);  /* the last access to the caller's memory */
        return NULL;
    }

    static int fr_parallel(int n, fr_task fn, void* ctx, fr_barrier* bar) {
        if (n <= 1) {
            fn(ctx, 0);
            return 0;
        }
    #if FR_HAVE_PTHREADS
        if (n > FR_MAX_THREADS)
            return -1;
        {
            pthread_t tid;
            pthread_attr_t attr;
            fr_thread_arg args[FR_MAX_THREADS];
            int k, started = 1;
            unsigned int finished = 0, seen;
    #if FR_PIN_START
            cpu_set_t allowed, one;
            int others[FR_MAX_THREADS], n_others = 0, c, me = sched_getcpu();
            if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0)
                for (c = 1; c <= CPU_SETSIZE && n_others < FR_MAX_THREADS; c++) {
                    int cpu = ((me < 0 ? 0 : me) + c) % CPU_SETSIZE;   /* the CPUs after this one, in turn */
                    if (cpu != me && CPU_ISSET(cpu, &allowed))
                        others[n_others++] = cpu;
                }
    #endif
            for (k = 1; k < n; k++) {
                if (pthread_attr_init(&attr) != 0)
                    break;
                pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                args[k].fn = fn; args[k].ctx = ctx; args[k].k = k; args[k].finished = &finished;
                args[k].allowed = NULL;
    #if FR_PIN_START
                if (n_others > 0) {
                    CPU_ZERO(&one);
                    CPU_SET(others[(k - 1) % n_others], &one);
                    if (pthread_attr_setaffinity_np(&attr, sizeof(one), &one) == 0)
                        args[k].allowed = &allowed;
                }
    #endif
                if (k == fr_fail_thread || pthread_create(&tid, &attr, fr_trampoline, &args[k]) != 0) {
                    pthread_attr_destroy(&attr);
                    break;
                }
                pthread_attr_destroy(&attr);
                started++;
            }
            if (started == n)
                fn(ctx, 0);
            else
                FR_STORE(&bar->abort, 1);
            /* wait for the started threads to count themselves out */
            while ((seen = FR_LOAD(&finished)) < (unsigned int) (started - 1))
                fr_wait(&finished, seen, NULL, NULL);
            return started == n ? 0 : -1;
        }
    #else
        (void) fn; (void) ctx; (void) bar;
        return -1;
    #endif
    }

    """
    ctypedef struct fr_barrier:
        int n
    ctypedef void (*fr_task)(void* ctx, int k) noexcept nogil
    void fr_barrier_init(fr_barrier* b, int n) noexcept nogil
    int fr_barrier_wait(fr_barrier* b, long long* st) noexcept nogil
    long long fr_now_ns() noexcept nogil
    bint fr_claim(unsigned int* item) noexcept nogil
    void fr_release(unsigned int* item) noexcept nogil
    int fr_wait_done(unsigned int* item, fr_barrier* b) noexcept nogil
    int fr_parallel(int n, fr_task fn, void* ctx, fr_barrier* bar) noexcept nogil
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
    void* hbuf             # (2, B, U): h double buffer
    void* rh               # (B, U): r * h_prev, GRU reset_after=False
    const Py_ssize_t* ubound  # (n + 1,) unit boundaries
    char* scratch          # n regions of `stride` bytes, 64-byte aligned
    Py_ssize_t stride
    Py_ssize_t n_panel_W, n_panel_R  # elements of the packed W and R of the widest thread
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


cdef void _prepare(floating* typed, Shared* S, int k) noexcept nogil:
    """Everything thread k needs before the time loop, for its units: its columns of W and R packed, its biases,
    its input projection (every position, padded ones too: their rows are never read); and its units' outputs
    y zero at padded positions, c = c0. Usually run by thread k itself (so what it reads every step starts out in
    its own cache), but by another thread when thread k has not started yet (_thread: starting a thread takes
    ~50-150 us here, which the calling thread spends on this instead of waiting)."""
    cdef Py_ssize_t B = S.B, T = S.T, D = S.D, U = S.U, G = S.G
    cdef Py_ssize_t u0 = S.ubound[k], u1 = S.ubound[k + 1], nu = u1 - u0, GN = G * nu
    cdef Py_ssize_t bb, t, g, j
    cdef Py_ssize_t off[6]
    cdef char* mine = S.scratch + k * S.stride
    _scratch_offsets(S, sizeof(floating), GN, off)
    cdef floating* Wp = <floating*> (mine + off[0])
    cdef floating* Rp = <floating*> (mine + off[1])
    cdef floating* xw = <floating*> (mine + off[2])
    cdef floating* bi = <floating*> (mine + off[4])
    cdef floating* br = <floating*> (mine + off[5])
    cdef const floating* b_in = <const floating*> S.b_in
    cdef const floating* b_rec = <const floating*> S.b_rec
    cdef floating* y = <floating*> S.y
    cdef floating* cT = <floating*> S.cT
    cdef const int64_t* lengths = S.lengths

    pack_gate_columns(<const floating*> S.W, G * U, D, U, u0, nu, 0, G, Wp)
    if S.cell == GRU and not S.reset_after:
        pack_gate_columns(<const floating*> S.R, G * U, U, U, u0, nu, 0, 2, Rp)
        pack_gate_columns(<const floating*> S.R, G * U, U, U, u0, nu, 2, 1,
                          Rp + packed_size(U, 2 * nu, sizeof(floating)))
    else:
        pack_gate_columns(<const floating*> S.R, G * U, U, U, u0, nu, 0, G, Rp)
    for g in range(G):
        for j in range(nu):
            bi[g * nu + j] = b_in[g * U + u0 + j]
            br[g * nu + j] = b_rec[g * U + u0 + j] if b_rec != NULL else 0
    for bb in range(B):
        for t in range(lengths[bb], T):
            memset(y + (bb * T + t) * U + u0, 0, nu * sizeof(floating))
        if cT != NULL:
            memcpy(cT + bb * U + u0, <const floating*> S.c0 + bb * U + u0, nu * sizeof(floating))
    if max_length(lengths, B) > 0:
        packed_matmul(<int> (B * T), <int> D, <const floating*> S.x, D, Wp, <int> GN, xw, GN, S.isa)


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
    cdef floating* Rp = <floating*> (mine + off[1])
    cdef floating* xw = <floating*> (mine + off[2])
    cdef floating* hr = <floating*> (mine + off[3])
    cdef floating* bi = <floating*> (mine + off[4])
    cdef floating* br = <floating*> (mine + off[5])
    cdef floating* Rp_h = Rp + packed_size(U, 2 * nu, sizeof(floating))   # reset_before: the h gate's columns
    cdef floating* a
    cdef floating* hrow
    cdef const floating* hprev
    cdef const floating* xrow
    cdef int cell = S.cell, isa = S.isa, other
    cdef bint reverse = S.reverse, relu = S.relu
    # barrier counters (fr_barrier_wait): of the first wait (it also waits for the other threads to start), the rest
    cdef long long st_first[FR_NSTAT]
    cdef long long st_rest[FR_NSTAT]
    cdef long long* st = st_first
    memset(st_first, 0, sizeof(st_first))
    memset(st_rest, 0, sizeof(st_rest))
    cdef long long t_loop = 0
    cdef unsigned int fp_mode = flush_denormals()  # per thread: MXCSR is a thread's own

    # Preparation: its own part first, then any other thread's nobody has claimed yet (that thread has not
    # started); then wait until its own part is done, if another thread took it.
    cdef long long prepared = 0
    if fr_claim(&S.prep[k]):
        _prepare(typed, S, k)
        fr_release(&S.prep[k])
        prepared += 1
    for other in range(S.n):
        if other != k and fr_claim(&S.prep[other]):
            _prepare(typed, S, other)
            fr_release(&S.prep[other])
            prepared += 1
    if fr_wait_done(&S.prep[k], &S.bar):
        restore_fp_mode(fp_mode)
        return  # aborted

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
                      hr + lo * GN, GN, isa)
        if reset_before:
            for bb in range(lo, hi):
                if lengths[bb] > s:
                    t = position(s, lengths[bb], reverse)
                    gru_gates_row(hr + bb * GN, xw + (bb * T + t) * GN, bi, nu, hcur + bb * U + u0,
                                  rh + bb * U + u0)
            if fr_barrier_wait(&S.bar, st):
                break  # aborted
            if st == st_first:
                t_loop = fr_now_ns()
            st = st_rest
            packed_matmul(<int> (hi - lo), <int> U, rh + lo * U, U, Rp_h, <int> nu, hr + lo * GN + 2 * nu, GN, isa)
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
            if cell == LSTM:
                lstm_row(a, xrow, bi, nu, cT + bb * U + u0, hrow)
            elif cell == SIMPLE:
                simple_rnn_row(a, xrow, bi, nu, relu)
                memcpy(hrow, a, nu * sizeof(floating))
            elif reset_before:
                gru_state_row(a, xrow, bi, nu, hprev, hrow)
            else:
                gru_row(a, xrow, bi, br, nu, hprev, hrow, NULL)
            memcpy(y + pos * U + u0, hrow, nu * sizeof(floating))

        # Every thread's part of h_t is written before anyone reads h_t (and before the buffer it read is reused)
        if fr_barrier_wait(&S.bar, st):
            break  # aborted
        if st == st_first:
            t_loop = fr_now_ns()
        st = st_rest
        hcur = hnext

    if t_loop:
        st_rest[5] = fr_now_ns() - t_loop  # the time loop after the first wait
    for bb in range(B):
        memcpy(hT + bb * U + u0, hcur + bb * U + u0, nu * sizeof(floating))
    memcpy(S.stats + 2 * FR_NSTAT * k, st_rest, sizeof(st_rest))
    memcpy(S.stats + 2 * FR_NSTAT * k + FR_NSTAT, st_first, sizeof(st_first))
    S.stats[2 * FR_NSTAT * k + FR_NSTAT] = prepared
    restore_fp_mode(fp_mode)


cdef void _task_f32(void* ctx, int k) noexcept nogil:
    _thread(<float*> NULL, <Shared*> ctx, k)


cdef void _task_f64(void* ctx, int k) noexcept nogil:
    _thread(<double*> NULL, <Shared*> ctx, k)


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


cdef object _run(int cell, const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                 const floating* b_in, const floating* b_rec, const floating[:, ::1] h0, const floating* c0,
                 const int64_t[::1] lengths, bint reverse, bint relu, bint reset_after,
                 floating[:, :, ::1] y, floating[:, ::1] hT, floating* cT, int n_threads, stats):
    cdef Shared S
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], D = x.shape[2], U = R.shape[0]
    cdef Py_ssize_t G = R.shape[1] // U, k, nu_max = 0, item = sizeof(floating)
    cdef Py_ssize_t off[6]
    dtype = np.float32 if floating is float else np.float64
    bounds = split_units(U, n_threads, item)
    cdef int n = len(bounds) - 1
    cdef Py_ssize_t[::1] ub = np.asarray(bounds, np.intp)
    for k in range(n):
        nu_max = max(nu_max, bounds[k + 1] - bounds[k])
    cdef bint reset_before = cell == GRU and not reset_after
    S.n_panel_W = packed_size(D, G * nu_max, item)
    S.n_panel_R = (packed_size(U, 2 * nu_max, item) + packed_size(U, nu_max, item) if reset_before
                   else packed_size(U, G * nu_max, item))
    S.B, S.T = B, T
    S.stride = _scratch_offsets(&S, item, G * nu_max, off)
    S.stride = (S.stride + 4095) // 4096 * 4096 + 64 * 3  # regions of different threads share no page
    cdef unsigned char[::1] scratch = np.empty(n * S.stride + 64, np.uint8)
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
    S.ubound = &ub[0]
    S.stats = &stat[0, 0]
    S.prep = &prep[0]
    fr_barrier_init(&S.bar, n)
    cdef int status
    with nogil:
        if floating is float:
            status = fr_parallel(n, _task_f32, &S, &S.bar)
        else:
            status = fr_parallel(n, _task_f64, &S, &S.bar)
    if stats is not None:
        st = np.asarray(stat)
        # per thread; the first barrier wait (which also waits for the other threads to start) apart
        F = FR_NSTAT
        stats.update(threads=n, bounds=bounds, waits=st[:, 0].tolist(), spins=st[:, 1].tolist(),
                     yields=st[:, 2].tolist(), sleeps=st[:, 3].tolist(), wait_ns=st[:, 4].tolist(),
                     loop_ns=st[:, 5].tolist(), prepared=st[:, F].tolist(), first_spins=st[:, F + 1].tolist(),
                     first_yields=st[:, F + 2].tolist(), first_sleeps=st[:, F + 3].tolist(),
                     first_wait_ns=st[:, F + 4].tolist())
    return -1 if status != 0 else n


def simple_rnn_forward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                       const floating[::1] b, const floating[:, ::1] h0, const int64_t[::1] lengths,
                       bint reverse, bint relu, floating[:, :, ::1] y, floating[:, ::1] hT, int n_threads,
                       stats=None):
    return _run(SIMPLE, x, W, R, &b[0], <const floating*> NULL, h0, <const floating*> NULL, lengths, reverse, relu,
                False, y, hT, <floating*> NULL, n_threads, stats)


def lstm_forward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                 const floating[::1] b, const floating[:, ::1] h0, const floating[:, ::1] c0,
                 const int64_t[::1] lengths, bint reverse, floating[:, :, ::1] y, floating[:, ::1] hT,
                 floating[:, ::1] cT, int n_threads, stats=None):
    return _run(LSTM, x, W, R, &b[0], <const floating*> NULL, h0, &c0[0, 0], lengths, reverse, False, False,
                y, hT, &cT[0, 0], n_threads, stats)


def gru_forward(const floating[:, :, ::1] x, const floating[:, ::1] W, const floating[:, ::1] R,
                const floating[::1] b_in, const floating[::1] b_rec, const floating[:, ::1] h0,
                const int64_t[::1] lengths, bint reverse, bint reset_after, floating[:, :, ::1] y,
                floating[:, ::1] hT, int n_threads, stats=None):
    return _run(GRU, x, W, R, &b_in[0], &b_rec[0] if reset_after else <const floating*> NULL, h0,
                <const floating*> NULL, lengths, reverse, False, reset_after, y, hT, <floating*> NULL, n_threads,
                stats)


def _matmul_check(const floating[:, ::1] A, const floating[:, ::1] Bm, int reps=1, int isa_level=-1):
    """A @ Bm through the packed-panel matmul (tests and benchmarks): Bm packed once, the product run reps times.
    Returns (C, seconds per product)."""
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
            packed_matmul(<int> M, <int> K, &A[0, 0], K, Pa, <int> N, &Cv[0, 0], N, level)
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
        status = fr_parallel(n, _barrier_task, &c, &c.bar)
    dt = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError("could not start threads")
    st = np.asarray(stat)
    return dt / max(rounds, 1), dict(waits=st[:, 0].tolist(), spins=st[:, 1].tolist(), yields=st[:, 2].tolist(),
                                      sleeps=st[:, 3].tolist(), wait_ns=st[:, 4].tolist())
