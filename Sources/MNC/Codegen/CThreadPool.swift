/// The thread pool of a threaded C build (`mnc compile --threads N`, N > 1): the header's pool
/// API and the source's pool runtime and entry points.
///
/// Every kernel's work is split statically into N parts when the code is generated. A pool of T
/// threads (1 ≤ T ≤ N: the caller and T - 1 workers) runs one inference: thread i runs parts
/// `[N·i/T, N·(i+1)/T)` of every kernel, and the threads meet at a barrier after each node. A
/// part computes the same values whichever thread runs it, so the logits do not depend on T.
/// `NAME_run` runs every part on the calling thread.
///
/// Synchronization uses the GCC and Clang `__atomic` builtins. A waiting thread spins briefly,
/// then yields its core a bounded number of times, then sleeps on the pool's condition variable.
/// A thread that changes a word that others wait on wakes the sleepers. Workers sleep this way
/// between inferences. The yields matter on a loaded machine: when the scheduler puts two of the
/// pool's threads on one core, a thread that only spun would hold the core that the thread it
/// waits for needs.

/// Returns the header lines of the pool API, placed after the declaration of `NAME_run`.
func cThreadsHeaderLines(names: CNames, threads: Int) -> [String] {
    let p = names.macro, f = names.function
    return [
        "/* Threads. Each kernel's work is split into \(p)_MAX_THREADS parts when the code is generated. A",
        "   pool of T threads, the caller and T - 1 workers, runs them: \(f)_run_threads() returns",
        "   the same output for every T. The pool is an object the caller allocates (static, on the",
        "   stack or inside another struct) and must neither move nor copy while it is started. Its",
        "   fields are private. Several pools, each with its own arena, may run at the same time;",
        "   one pool runs one call at a time. */",
        "typedef struct \(f)_threads \(f)_threads;",
        "",
        "/* One worker thread of a pool (private). */",
        "struct \(f)_threads_worker {",
        "    \(f)_threads *pool;",
        "    int index;",
        "    pthread_t thread;",
        "};",
        "",
        "struct \(f)_threads {",
        "    struct \(f)_threads_worker workers[\(threads - 1)];",
        "    pthread_mutex_t mutex;",
        "    pthread_cond_t wake;",
        "    unsigned state;      /* started or not */",
        "    unsigned count;      /* threads, the caller included */",
        "    unsigned generation; /* counts the jobs handed to the workers */",
        "    unsigned stop;",
        "    unsigned sleepers;   /* threads asleep on wake */",
        "    unsigned arrived;    /* threads at the barrier */",
        "    unsigned phase;      /* counts the barriers passed */",
        "    unsigned busy;       /* a call is running */",
        "    const void *weights;",
        "    const float *input;",
        "    float *output;",
        "    void *arena;",
        "};",
        "",
        "/* Starts threads - 1 worker threads (1 <= threads <= \(p)_MAX_THREADS) on a pool that is not",
        "   started, and they sleep until \(f)_run_threads() hands them work. Returns \(p)_OK, \(p)_ERROR_NULL_ARGUMENT,",
        "   \(p)_ERROR_THREAD_COUNT, or \(p)_ERROR_THREAD_START with nothing left running. */",
        "int \(f)_threads_start(\(f)_threads *pool, int threads);",
        "",
        "/* Runs the network on the pool's threads, the calling thread included: the arguments and",
        "   return codes of \(f)_run(), and \(p)_ERROR_POOL_STATE when pool is not started or is",
        "   running another call. The arena is \(p)_ARENA_SIZE bytes, as for \(f)_run(). */",
        "int \(f)_run_threads(\(f)_threads *pool, const void *weights, const float *input, float *output, void *arena);",
        "",
        "/* Stops and joins the workers. A stopped pool may be started again. */",
        "void \(f)_threads_stop(\(f)_threads *pool);",
    ]
}

/// Returns the source lines of the pool runtime that the kernels use: the `thread_work` type
/// and the barrier. They come before the kernels.
func cThreadsRuntimeLines(names: CNames, threads: Int) -> [String] {
    let f = names.function
    let text = """
    #if !defined(__GNUC__)
    #error "the threaded build needs GCC or Clang: it synchronizes with the __atomic builtins"
    #endif

    /* The parts of every kernel that one thread runs, [first_part, end_part) of the \(threads)
       static parts, and the pool it synchronizes with: NULL when one thread runs every part. */
    typedef struct {
        \(f)_threads *pool;
        int first_part;
        int end_part;
    } thread_work;

    /* A waiting thread checks its word POOL_PAUSES times with a pause instruction between checks
       (about 7 microseconds on an AMD EPYC, an estimate from timing 20000 of them), then
       POOL_YIELDS times with sched_yield() between checks, then sleeps on the pool's condition
       variable. */
    #define POOL_PAUSES 200
    #define POOL_YIELDS 20000
    #define POOL_STARTED 0x706f6f6cu

    static void pool_pause(void)
    {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }

    /* Returns once *word differs from value. Sleepers count themselves before their last check,
       and pool_publish() reads the count after its store, so no wake-up is lost. */
    static void pool_wait(\(f)_threads *pool, unsigned *word, unsigned value)
    {
        for (int spin = 0; spin < POOL_PAUSES; ++spin) {
            if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value) return;
            pool_pause();
        }
        for (int spin = 0; spin < POOL_YIELDS; ++spin) {
            if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value) return;
            sched_yield();
        }
        pthread_mutex_lock(&pool->mutex);
        __atomic_add_fetch(&pool->sleepers, 1u, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == value) {
            pthread_cond_wait(&pool->wake, &pool->mutex);
        }
        __atomic_sub_fetch(&pool->sleepers, 1u, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&pool->mutex);
    }

    /* Stores value in *word (a release) and wakes the threads asleep in pool_wait(). */
    static void pool_publish(\(f)_threads *pool, unsigned *word, unsigned value)
    {
        __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&pool->sleepers, __ATOMIC_SEQ_CST) != 0) {
            pthread_mutex_lock(&pool->mutex);
            pthread_cond_broadcast(&pool->wake);
            pthread_mutex_unlock(&pool->mutex);
        }
    }

    /* Returns when all pool->count threads have arrived. The last one resets the count before it
       advances the phase, so the next barrier starts from zero. */
    static void pool_barrier(\(f)_threads *pool)
    {
        const unsigned phase = __atomic_load_n(&pool->phase, __ATOMIC_ACQUIRE);
        if (__atomic_add_fetch(&pool->arrived, 1u, __ATOMIC_ACQ_REL) == pool->count) {
            __atomic_store_n(&pool->arrived, 0u, __ATOMIC_RELAXED);
            pool_publish(pool, &pool->phase, phase + 1u);
        } else {
            pool_wait(pool, &pool->phase, phase);
        }
    }

    static void work_barrier(const thread_work *work)
    {
        if (work->pool != NULL) pool_barrier(work->pool);
    }
    """
    return text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
}

/// Returns the source lines of the entry points after the network's `NAME_run_parts`:
/// `NAME_run`, the worker loop, `NAME_threads_start`, `NAME_run_threads` and `NAME_threads_stop`.
func cThreadsEntryLines(names: CNames, threads: Int) -> [String] {
    let p = names.macro, f = names.function
    let text = """
    int \(f)_run(const void *weights, const float *input, float *output, void *arena)
    {
        const int status = \(f)_check_arguments(weights, input, output, arena);
        if (status != \(p)_OK) return status;
        const thread_work work = {NULL, 0, \(threads)};
        \(f)_run_parts(weights, input, output, arena, &work);
        return \(p)_OK;
    }

    static void *\(f)_worker(void *argument)
    {
        const struct \(f)_threads_worker *worker = argument;
        \(f)_threads *pool = worker->pool;
        const int count = (int)pool->count;
        const thread_work work = {pool, \(threads) * worker->index / count, \(threads) * (worker->index + 1) / count};
        unsigned seen = 0;
        for (;;) {
            pool_wait(pool, &pool->generation, seen);
            seen = __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE);
            if (__atomic_load_n(&pool->stop, __ATOMIC_ACQUIRE) != 0) return NULL;
            \(f)_run_parts(pool->weights, pool->input, pool->output, pool->arena, &work);
            pool_barrier(pool);
        }
    }

    /* Stops the first `started` workers and destroys the mutex and the condition variable. */
    static void \(f)_join(\(f)_threads *pool, int started)
    {
        __atomic_store_n(&pool->stop, 1u, __ATOMIC_SEQ_CST);
        pool_publish(pool, &pool->generation, __atomic_load_n(&pool->generation, __ATOMIC_RELAXED) + 1u);
        for (int i = 0; i < started; ++i) {
            pthread_join(pool->workers[i].thread, NULL);
        }
        pthread_cond_destroy(&pool->wake);
        pthread_mutex_destroy(&pool->mutex);
    }

    int \(f)_threads_start(\(f)_threads *pool, int threads)
    {
        if (pool == NULL) return \(p)_ERROR_NULL_ARGUMENT;
        if (threads < 1 || threads > \(p)_MAX_THREADS) return \(p)_ERROR_THREAD_COUNT;
        pool->state = 0;
        pool->count = (unsigned)threads;
        pool->generation = 0;
        pool->stop = 0;
        pool->sleepers = 0;
        pool->arrived = 0;
        pool->phase = 0;
        pool->busy = 0;
        if (pthread_mutex_init(&pool->mutex, NULL) != 0) return \(p)_ERROR_THREAD_START;
        if (pthread_cond_init(&pool->wake, NULL) != 0) {
            pthread_mutex_destroy(&pool->mutex);
            return \(p)_ERROR_THREAD_START;
        }
        for (int i = 1; i < threads; ++i) {
            struct \(f)_threads_worker *worker = &pool->workers[i - 1];
            worker->pool = pool;
            worker->index = i;
            if (pthread_create(&worker->thread, NULL, \(f)_worker, worker) != 0) {
                \(f)_join(pool, i - 1);
                return \(p)_ERROR_THREAD_START;
            }
        }
        pool->state = POOL_STARTED;
        return \(p)_OK;
    }

    int \(f)_run_threads(\(f)_threads *pool, const void *weights, const float *input, float *output, void *arena)
    {
        if (pool == NULL) return \(p)_ERROR_NULL_ARGUMENT;
        const int status = \(f)_check_arguments(weights, input, output, arena);
        if (status != \(p)_OK) return status;
        if (pool->state != POOL_STARTED || __atomic_exchange_n(&pool->busy, 1u, __ATOMIC_ACQUIRE) != 0) {
            return \(p)_ERROR_POOL_STATE;
        }
        pool->weights = weights;
        pool->input = input;
        pool->output = output;
        pool->arena = arena;
        pool_publish(pool, &pool->generation, __atomic_load_n(&pool->generation, __ATOMIC_RELAXED) + 1u);
        const thread_work work = {pool, 0, \(threads) / (int)pool->count};
        \(f)_run_parts(weights, input, output, arena, &work);
        pool_barrier(pool);
        __atomic_store_n(&pool->busy, 0u, __ATOMIC_RELEASE);
        return \(p)_OK;
    }

    void \(f)_threads_stop(\(f)_threads *pool)
    {
        if (pool == NULL || pool->state != POOL_STARTED) return;
        \(f)_join(pool, (int)pool->count - 1);
        pool->state = 0;
    }
    """
    return text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
}
