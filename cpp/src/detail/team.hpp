// SPDX-License-Identifier: Apache-2.0
// A team of threads for one computation (private to the core): the caller and size − 1 helpers
// run the same function and meet at barriers. Waiting spins briefly and then yields the CPU: the
// machines this runs on are often shared, and a member may itself be waiting for a core.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace deadspec::detail {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

/// Wait until `ready()` holds: a short spin (about a microsecond per 40 rounds), then yields.
template <typename Ready>
void spin_wait(Ready&& ready) {
    constexpr int kSpins = 4000;
    for (int i = 0; !ready(); ++i) {
        if (i < kSpins)
            cpu_relax();
        else
            std::this_thread::yield();
    }
}

class Team {
  public:
    /// Starts up to `size` − 1 helper threads (fewer if the system refuses one); size() says how
    /// many members there are.
    explicit Team(int size) {
        for (int m = 1; m < size; ++m) {
            try {
                m_threads.emplace_back([this, m] { helper(m); });
            } catch (...) {  // run with the members there are
                break;
            }
        }
        m_size = static_cast<int>(m_threads.size()) + 1;
    }
    ~Team() {
        m_stop.store(true, std::memory_order_release);
        for (auto& t : m_threads) t.join();
    }
    Team(const Team&) = delete;
    Team& operator=(const Team&) = delete;

    int size() const { return m_size; }

    /// f(member) on every member (the caller is member 0); returns when all have returned.
    /// f must not throw (a member that left would leave the others at a barrier).
    template <typename F>
    void run(F&& f) {
        m_job = [](void* p, int m) { (*static_cast<std::remove_reference_t<F>*>(p))(m); };
        m_arg = const_cast<void*>(static_cast<const void*>(&f));
        m_done.store(0, std::memory_order_relaxed);
        m_runs.fetch_add(1, std::memory_order_release);
        f(0);
        spin_wait([this] { return m_done.load(std::memory_order_acquire) == m_size - 1; });
    }

    /// Every member waits here until all have arrived.
    void barrier() {
        const std::int64_t gen = m_gen.load(std::memory_order_acquire);
        if (m_arrived.fetch_add(1, std::memory_order_acq_rel) == m_size - 1) {
            m_arrived.store(0, std::memory_order_relaxed);
            m_gen.store(gen + 1, std::memory_order_release);
            return;
        }
        spin_wait([this, gen] { return m_gen.load(std::memory_order_acquire) != gen; });
    }

  private:
    void helper(int m) {
        for (int seen = 0;;) {
            int runs = 0;
            spin_wait([&] {
                return m_stop.load(std::memory_order_acquire) ||
                       (runs = m_runs.load(std::memory_order_acquire)) != seen;
            });
            if (m_stop.load(std::memory_order_acquire)) return;
            seen = runs;
            m_job(m_arg, m);
            m_done.fetch_add(1, std::memory_order_acq_rel);
        }
    }

    std::vector<std::thread> m_threads;
    int m_size = 1;
    void (*m_job)(void*, int) = nullptr;
    void* m_arg = nullptr;
    std::atomic<int> m_runs{0};  // runs started
    std::atomic<bool> m_stop{false};
    std::atomic<int> m_done{0};
    alignas(64) std::atomic<int> m_arrived{0};
    alignas(64) std::atomic<std::int64_t> m_gen{0};
};

}  // namespace deadspec::detail
