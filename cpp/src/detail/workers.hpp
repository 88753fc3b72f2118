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
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace deadspec::detail {

/// A team of `extra` + 1 threads: run(n, f) calls f(0) on the caller and f(1) … f(n − 1) on
/// the others and returns when all have returned (an exception from any is rethrown on the
/// caller). Callers share their work through a counter, so a team smaller than asked for (an
/// OpenMP runtime that gives fewer threads) only runs slower.
///
/// Built with OpenMP (the default), the team is an OpenMP parallel region: in a process with
/// torch, torch's own pool (one libgomp per process). Its threads spin for a while after every
/// torch op; threads of our own would wait for the cores they hold (a DDCAdam step right after
/// torch work ran at one thread's speed, 2.2 ms against 1.24 ms on the MLP of
/// bench_optim.py), while its own threads take the work at once.
///
/// Without OpenMP, `extra` threads are kept for the life of the object: a worker spins for a
/// short while after a run (so the passes of one step find it awake), then sleeps on a
/// condition variable (an idle optimizer costs nothing). Starting a thread per pass costs tens of
/// microseconds, about what a pass over a small model takes.
#if defined(_OPENMP)
class Workers {
public:
    explicit Workers(int extra) : m_size(std::max(0, extra) + 1) {}
    Workers(const Workers&) = delete;
    Workers& operator=(const Workers&) = delete;

    int size() const { return m_size; }

    void run(int n, const std::function<void(int)>& f) {
        n = std::max(1, std::min(n, size()));
        if (n == 1) {
            f(0);
            return;
        }
        std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
#pragma omp parallel num_threads(n)
        {
            const int id = omp_get_thread_num();
            if (id < n) {
                try {
                    f(id);
                } catch (...) {
                    errors[static_cast<std::size_t>(id)] = std::current_exception();
                }
            }
        }
        for (auto& e : errors)
            if (e) std::rethrow_exception(e);
    }

private:
    int m_size;
};
#else
class Workers {
public:
    explicit Workers(int extra) {
        for (int i = 0; i < extra; ++i) m_threads.emplace_back([this, i] { loop(i + 1); });
    }
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
    int size() const { return static_cast<int>(m_threads.size()) + 1; }

    void run(int n, const std::function<void(int)>& f) {
        n = std::max(1, std::min(n, size()));
        if (n == 1) {
            f(0);
            return;
        }
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
#endif

}  // namespace deadspec::detail
