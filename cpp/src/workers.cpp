// SPDX-License-Identifier: Apache-2.0
// The process's OpenMP runtime for detail::Workers, found at run time among the loaded objects.
#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "detail/workers.hpp"

namespace deadspec::detail {

namespace {

// The runtimes that export GOMP_parallel: GNU's libgomp (torch's, as libgomp.so.1 or a wheel's
// libgomp-<hash>.so.1), Intel's libiomp5 and LLVM's libomp (their GNU compatibility layers).
bool is_openmp_runtime(const char* path) {
    const char* base = std::strrchr(path, '/');
    base = base ? base + 1 : path;
    for (const char* prefix : {"libgomp", "libiomp5", "libomp."})
        if (std::strncmp(base, prefix, std::strlen(prefix)) == 0) return true;
    return false;
}

int find_runtime(struct dl_phdr_info* info, std::size_t, void* out) {
    if (info->dlpi_name == nullptr || !is_openmp_runtime(info->dlpi_name)) return 0;
    // RTLD_NOLOAD: a handle on the copy already loaded, never a new one; kept open, so the
    // runtime stays loaded while the core may call it
    void* h = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
    if (h == nullptr) return 0;
    auto* api = static_cast<ProcessOpenMP*>(out);
    api->parallel = reinterpret_cast<decltype(api->parallel)>(dlsym(h, "GOMP_parallel"));
    api->thread_num = reinterpret_cast<decltype(api->thread_num)>(dlsym(h, "omp_get_thread_num"));
    if (api->parallel != nullptr && api->thread_num != nullptr) {
        api->path = info->dlpi_name;
        return 1;
    }
    *api = ProcessOpenMP{};
    dlclose(h);
    return 0;
}

bool openmp_allowed() {
    const char* v = std::getenv("DEADSPEC_OPENMP");
    return v == nullptr || std::string(v) != "0";
}

}  // namespace

const ProcessOpenMP* process_openmp() {
    // Found once; until then looked for at most once a second (torch may be loaded later).
    static std::atomic<const ProcessOpenMP*> found{nullptr};
    static std::mutex mutex;
    static std::chrono::steady_clock::time_point next{};
    static ProcessOpenMP api;
    static const bool allowed = openmp_allowed();
    if (const ProcessOpenMP* p = found.load(std::memory_order_acquire)) return p;
    if (!allowed) return nullptr;
    std::lock_guard<std::mutex> lock(mutex);
    if (const ProcessOpenMP* p = found.load(std::memory_order_relaxed)) return p;
    const auto now = std::chrono::steady_clock::now();
    if (now < next) return nullptr;
    next = now + std::chrono::seconds(1);
    if (dl_iterate_phdr(&find_runtime, &api) == 1) found.store(&api, std::memory_order_release);
    return found.load(std::memory_order_relaxed);
}

}  // namespace deadspec::detail

namespace deadspec {

std::string openmp_runtime() {
    const detail::ProcessOpenMP* omp = detail::process_openmp();
    return omp == nullptr ? std::string() : omp->path;
}

}  // namespace deadspec
