// SPDX-License-Identifier: Apache-2.0
// Workers: a small persistent thread team for passes that run many times a second (DDCAdamPlan).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace deadspec::detail {

/// The OpenMP runtime already loaded in the process (torch's libgomp, or an Intel/LLVM runtime
/// with the GNU entry points), found at run time: the core does not link one, so it neither
/// brings a second runtime into a torch process (a wheel would graft its own copy under another
/// name) nor needs one. Null when none is loaded or DEADSPEC_OPENMP=0 (workers.cpp).
struct ProcessOpenMP {
    void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
    int (*thread_num)() = nullptr;                                           // omp_get_thread_num
    std::string path;  ///< the runtime's file
};
const ProcessOpenMP* process_openmp();

/// A team of `extra` + 1 threads: run(n, f) calls f(0) on the caller and f(1) … f(n − 1) on the
/// others and returns when all have returned (an exception from any is rethrown on the caller).
/// Callers share their work through a counter, so a team smaller than asked for only runs
/// slower.
///
/// In a process with an OpenMP runtime (torch's), the team is a parallel region of that
/// runtime: torch's own pool. Its threads spin for a while after every torch op, and threads of
/// our own would wait for the cores they hold (a DDCAdam step right after torch work ran at one
/// thread's speed, 2.2 ms against 1.24 ms on the MLP of bench_optim.py); its own threads take
/// the work at once. Otherwise `extra` threads are started at the first run and kept for the
/// life of the object: a worker spins for a short while after a run (so the passes of one step
/// find it awake), then sleeps on a condition variable (an idle optimizer costs nothing).
/// Starting a thread per pass costs tens of microseconds, about what a pass over a small model
/// takes.
class Workers {
public:
    explicit Workers(int extra) : m_extra(std::max(0, extra)) {}
    ~Workers() {
        {
            std::lock_guard<std::mutex> lk(m_mutex);
            m_stop = true;
            m_gen.fetch_add(1);
        }
        m_cv.notify_all();
        for (auto& t : m_threads) t.join();
    }
    Workers(const Workers&) = delete;
    Workers& operator=(const Workers&) = delete;

    /// Threads available to run(): the workers and the caller.
    int size() const { return m_extra + 1; }

    void run(int n, const std::function<void(int)>& f) {
        n = std::max(1, std::min(n, size()));
        if (n == 1) {
            f(0);
            return;
        }
        if (const ProcessOpenMP* omp = process_openmp()) {
            run_openmp(*omp, n, f);
            return;
        }
        if (m_threads.empty())
            for (int i = 0; i < m_extra; ++i) m_threads.emplace_back([this, i] { loop(i + 1); });
        m_errors.assign(static_cast<std::size_t>(n), nullptr);
        m_f = &f;
        m_n = n;
        m_pending.store(n - 1);
        {
            std::lock_guard<std::mutex> lk(m_mutex);
            m_gen.fetch_add(1);
        }
        m_cv.notify_all();
        try {
            f(0);
        } catch (...) {
            m_errors[0] = std::current_exception();
        }
        // A worker that took an item usually returns within microseconds; one that was
        // preempted holding it (its core taken, e.g. by torch's spinning OpenMP threads) comes
        // back only when that core's scheduler runs it again, milliseconds later. So after a
        // short spin the caller blocks: its core goes idle, and the kernel's idle balancing
        // moves the waiting worker there at once (a yielding caller keeps its core busy).
        const auto spin = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
        while (m_pending.load() > 0 && std::chrono::steady_clock::now() < spin)
            std::this_thread::yield();
        if (m_pending.load() > 0) {
            std::unique_lock<std::mutex> lk(m_done_mutex);
            m_done.wait(lk, [&] { return m_pending.load() == 0; });
        }
        m_f = nullptr;
        for (auto& e : m_errors)
            if (e) std::rethrow_exception(e);
    }

private:
    struct Region {
        const ProcessOpenMP* omp;
        int n;
        const std::function<void(int)>* f;
        std::vector<std::exception_ptr>* errors;
    };
    static void region(void* data) {
        const Region& r = *static_cast<const Region*>(data);
        const int id = r.omp->thread_num();
        if (id < 0 || id >= r.n) return;
        try {
            (*r.f)(id);
        } catch (...) {
            (*r.errors)[static_cast<std::size_t>(id)] = std::current_exception();
        }
    }
    static void run_openmp(const ProcessOpenMP& omp, int n, const std::function<void(int)>& f) {
        std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
        Region r{&omp, n, &f, &errors};
        omp.parallel(&region, &r, static_cast<unsigned>(n), 0u);
        for (auto& e : errors)
            if (e) std::rethrow_exception(e);
    }

    void loop(int id) {
        std::uint64_t seen = 0;
        for (;;) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
            while (m_gen.load() == seen && std::chrono::steady_clock::now() < until)
                std::this_thread::yield();
            if (m_gen.load() == seen) {
                std::unique_lock<std::mutex> lk(m_mutex);
                m_cv.wait(lk, [&] { return m_gen.load() != seen; });
            }
            seen = m_gen.load();
            if (m_stop) return;
            if (id < m_n) {
                try {
                    (*m_f)(id);
                } catch (...) {
                    m_errors[static_cast<std::size_t>(id)] = std::current_exception();
                }
                if (m_pending.fetch_sub(1) == 1) {
                    // (the lock orders this after a caller's test of m_pending: no lost wake-up)
                    { std::lock_guard<std::mutex> lk(m_done_mutex); }
                    m_done.notify_one();
                }
            }
        }
    }

    int m_extra;
    std::vector<std::thread> m_threads;
    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::mutex m_done_mutex;            // the caller's wait for the last worker of a run
    std::condition_variable m_done;
    std::atomic<std::uint64_t> m_gen{0};
    std::atomic<int> m_pending{0};
    const std::function<void(int)>* m_f = nullptr;
    int m_n = 0;
    std::atomic<bool> m_stop{false};
    std::vector<std::exception_ptr> m_errors;
};

}  // namespace deadspec::detail
