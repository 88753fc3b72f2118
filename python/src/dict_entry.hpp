// SPDX-License-Identifier: Apache-2.0
// One dict argument of a batched binding ("<fn>: block 3"), its keys checked, its tensors read as
// DLPack views. Shared by the DDC bindings. Use with the GIL held.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "deadspec/errors.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

namespace py = pybind11;

class DictEntry {
public:
    /// `where` starts every message ("deadspec.DDCAdamPlan: site 2"); `keys` are the entries it
    /// may have (any other is an error); the views it creates go to `views`, which owns the
    /// capsules for as long as the views are used.
    DictEntry(const py::handle& h, std::string where, const std::vector<std::string>& keys,
              std::vector<std::unique_ptr<DLPackView>>& views)
        : m_where(std::move(where)), m_views(views) {
        if (!py::isinstance<py::dict>(h))
            throw py::type_error(m_where + " must be a dict, got " +
                                 std::string(py::str(py::type::of(h).attr("__name__"))));
        m_dict = py::reinterpret_borrow<py::dict>(h);
        for (const auto& item : m_dict) {
            const auto key = std::string(py::str(item.first));
            DEADSPEC_CHECK_ARG(std::find(keys.begin(), keys.end(), key) != keys.end(), m_where,
                               " has an unknown entry '", key, "'");
        }
    }

    const std::string& where() const { return m_where; }

    /// Whether the key is there at all (a None value included).
    bool contains(const char* key) const { return m_dict.contains(key); }

    /// Whether the entry is given (absent and None alike mean not given).
    bool has(const char* key) const { return m_dict.contains(key) && !m_dict[key].is_none(); }

    /// The DLPack capsule under `key` as a view; a null view when not given, unless `required`.
    TensorView tensor(const char* key, bool required = false) {
        if (!has(key)) {
            DEADSPEC_CHECK_ARG(!required, m_where, " needs '", key, "'");
            return TensorView{};
        }
        m_views.push_back(std::make_unique<DLPackView>(
            py::reinterpret_borrow<py::object>(m_dict[key]), m_where.c_str(), key));
        return m_views.back()->view();
    }

    /// The entry under `key` (present) as a T; a TypeError naming the key and `type` if not one.
    template <typename T>
    T get(const char* key, const char* type) const {
        const py::object v = m_dict[key];
        try {
            return v.cast<T>();
        } catch (const py::cast_error&) {
            throw py::type_error(m_where + ": '" + key + "' must be " + type + ", got " +
                                 std::string(py::str(py::type::of(v).attr("__name__"))));
        }
    }

    /// As get, `fallback` when the entry is not given.
    template <typename T>
    T get(const char* key, T fallback, const char* type) const {
        return has(key) ? get<T>(key, type) : fallback;
    }

private:
    std::string m_where;
    std::vector<std::unique_ptr<DLPackView>>& m_views;
    py::dict m_dict;
};

}  // namespace deadspec::python
