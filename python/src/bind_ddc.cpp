// SPDX-License-Identifier: Apache-2.0
// Bindings: the DDCAdam kernels (fused step, split form, scales) on DLPack tensors, in place.
#include <pybind11/eigen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "deadspec/ddc.hpp"
#include "dict_entry.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

namespace {

// The entries every block dict of ddc_adam_update_many and the ddc_split_* passes takes; the
// first kRequired of them are required.
constexpr const char* kCommonKeys[] = {"param", "grad", "exp_avg", "exp_avg_sq", "lr", "beta1",
                                       "beta2", "eps", "step", "rot_axis", "rot_segments"};
constexpr std::size_t kRequired = 9;

// One block dict of a batched call, its keys checked (no unknown entry, no required one missing;
// `fn` and the block's index name it in messages). The views it creates go to `views`, which
// owns the capsules until the call returns. Use with the GIL held.
class BlockReader : public DictEntry {
public:
    BlockReader(const py::handle& h, std::size_t index, const char* fn,
                std::initializer_list<const char*> extra,
                std::vector<std::unique_ptr<DLPackView>>& views)
        : DictEntry(h, std::string(fn) + ": block " + std::to_string(index), keys(extra), views) {
        for (std::size_t k = 0; k < kRequired; ++k)
            DEADSPEC_CHECK_ARG(contains(kCommonKeys[k]), where(), " needs '", kCommonKeys[k],
                               "'");
    }

    /// The entries every block has: tensors, Adam hyper-parameters (decay 1), head rotation.
    template <typename Block>
    void read_common(Block& b) {
        b.param = tensor("param");
        b.grad = tensor("grad");
        b.exp_avg = tensor("exp_avg");
        b.exp_avg_sq = tensor("exp_avg_sq");
        b.hp = AdamStep{get<double>("lr", "a float"), get<double>("beta1", "a float"),
                        get<double>("beta2", "a float"), get<double>("eps", "a float"),
                        get<std::int64_t>("step", "an int"), 1.0};
        DEADSPEC_CHECK_ARG(has("rot_axis") == has("rot_segments"), where(), ": '",
                           has("rot_axis") ? "rot_axis" : "rot_segments", "' needs '",
                           has("rot_axis") ? "rot_segments" : "rot_axis", "'");
        if (has("rot_axis")) {
            b.rot_axis = get<int>("rot_axis", "an int");
            b.rot_segments = get<std::vector<std::pair<std::int64_t, std::int64_t>>>(
                "rot_segments", "a list of (start, stop) pairs");
        }
    }

private:
    static std::vector<std::string> keys(std::initializer_list<const char*> extra) {
        std::vector<std::string> out(std::begin(kCommonKeys), std::end(kCommonKeys));
        out.insert(out.end(), extra.begin(), extra.end());
        return out;
    }
};

// The blocks of one batched call and the views that own their capsules (held by pointer: a
// DLPackView does not move). Built and destroyed with the GIL held; the blocks are read without.
template <typename Block>
struct ParsedBlocks {
    std::vector<std::unique_ptr<DLPackView>> views;
    std::vector<Block> blocks;
};

// A list of block dicts for `fn`: the common entries (BlockReader::read_common), then the call's
// own ones (`extra`, read by `read_extra(reader, block)`).
template <typename Block, typename ReadExtra>
ParsedBlocks<Block> parse_blocks(const py::list& blocks, const char* fn,
                                 std::initializer_list<const char*> extra, ReadExtra read_extra) {
    ParsedBlocks<Block> out;
    out.blocks.reserve(blocks.size());
    std::size_t index = 0;
    for (const py::handle& h : blocks) {
        BlockReader r(h, index++, fn, extra, out.views);
        Block b;
        r.read_common(b);
        read_extra(r, b);
        out.blocks.push_back(std::move(b));
    }
    return out;
}

}  // namespace

void bind_ddc(py::module_& m) {
    m.def(
        "ddc_adam_update",
        [](const py::object& param, const py::object& grad, const py::object& exp_avg,
           const py::object& exp_avg_sq, const py::object& scale, double lr, double beta1,
           double beta2, double eps, std::int64_t step, const py::object& col_scale,
           double decay) {
            constexpr const char* fn = "deadspec.ddc_adam_update";
            DLPackView vp(param, fn, "param");
            DLPackView vg(grad, fn, "grad");
            DLPackView vm(exp_avg, fn, "exp_avg");
            DLPackView vv(exp_avg_sq, fn, "exp_avg_sq");
            std::optional<DLPackView> vs;
            std::optional<DLPackView> vc;
            if (!scale.is_none()) vs.emplace(scale, fn, "scale");
            if (!col_scale.is_none()) vc.emplace(col_scale, fn, "col_scale");
            const AdamStep hp{lr, beta1, beta2, eps, step, decay};
            std::vector<std::int64_t> refused;
            {
                py::gil_scoped_release nogil;
                ddc_adam_update_many({AdamBlock{vp.view(), vg.view(), vm.view(), vv.view(),
                                                vs ? vs->view() : TensorView{},
                                                vc ? vc->view() : TensorView{}, hp, -1, {}}},
                                     refused);
            }
            return refused.at(0);
        },
        py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("scale"), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
        py::arg("eps"), py::arg("step"), py::arg("col_scale") = py::none(),
        py::arg("decay") = 1.0,
        "Fused DDCAdam block step in place (param, exp_avg, exp_avg_sq are written); "
        "σ = scale·col_scale, param multiplied by decay first. Returns the number of elements "
        "whose new values were not finite (kept at their pre-step values).");

    m.def(
        "ddc_adam_update_many",
        [](const py::list& blocks) {
            auto args = parse_blocks<AdamBlock>(
                blocks, "deadspec.ddc_adam_update_many", {"scale", "col_scale", "decay", "keep"},
                [](BlockReader& r, AdamBlock& b) {
                    b.scale = r.tensor("scale");
                    b.col_scale = r.tensor("col_scale");
                    if (r.has("decay")) b.hp.decay = r.get<double>("decay", "float");
                    if (r.has("keep")) b.keep = r.get<bool>("keep", "a bool");
                });
            std::vector<std::int64_t> refused;
            {
                py::gil_scoped_release nogil;
                ddc_adam_update_many(args.blocks, refused);
            }
            return refused;
        },
        py::arg("blocks"),
        "Fused DDCAdam step of many blocks in one call: a list of dicts with the DLPack capsules "
        "param, grad, exp_avg, exp_avg_sq, optional scale and col_scale (absent or None: 1), "
        "lr, beta1, beta2, eps (float), step (int), optional decay (float, 1.0) and, for a "
        "block whose head segments are rotated (second moment shared per segment), rot_axis "
        "(int) with rot_segments (list of (start, stop)). All are validated before any is "
        "written. Returns per block the number of elements whose new values were not finite "
        "(kept at their pre-step values; with keep=False, written, only counted).");

    // The split form's three passes: each takes a list of dicts (the common entries of
    // parse_blocks; optional decay (x read as x·decay), row_scale, col_scale, col_mean, row_coef, col_coef,
    // col_norm, row_mult, col_mult).
    auto parse_split = [](const py::list& blocks, const char* fn) {
        return parse_blocks<SplitBlock>(
            blocks, fn,
            {"row_scale", "col_scale", "col_mean", "row_coef", "col_coef", "col_norm", "row_mult",
             "col_mult", "decay"},
            [](BlockReader& r, SplitBlock& b) {
                if (r.has("decay")) b.hp.decay = r.get<double>("decay", "a float");
                b.row_scale = r.tensor("row_scale");
                b.col_scale = r.tensor("col_scale");
                b.col_mean = r.tensor("col_mean");
                b.row_coef = r.tensor("row_coef");
                b.col_coef = r.tensor("col_coef");
                b.col_norm = r.tensor("col_norm");
                b.row_mult = r.tensor("row_mult");
                b.col_mult = r.tensor("col_mult");
            });
    };
    m.def(
        "ddc_split_sums",
        [parse_split](const py::list& blocks) {
            auto args = parse_split(blocks, "deadspec.ddc_split_sums");
            std::vector<SplitSums> res;
            {
                py::gil_scoped_release nogil;
                res = ddc_split_sums(args.blocks);
            }
            py::list out;
            for (const SplitSums& s : res)
                out.append(py::make_tuple(s.row_gx, s.row_xx, s.col_gx, s.col_xx));
            return out;
        },
        py::arg("blocks"),
        "Split form, pass 0: per block (Σ g̃x̃ per row, Σ x̃² per row, Σ g̃·Px̃ per column, "
        "Σ (Px̃)² per column), float64.");
    m.def(
        "ddc_split_moments",
        [parse_split](const py::list& blocks) {
            auto args = parse_split(blocks, "deadspec.ddc_split_moments");
            std::vector<std::int64_t> refused;
            std::vector<std::pair<Eigen::VectorXd, Eigen::VectorXd>> res;
            {
                py::gil_scoped_release nogil;
                res = ddc_split_moments(args.blocks, refused);
            }
            py::list out;
            for (std::size_t k = 0; k < res.size(); ++k)
                out.append(py::make_tuple(res[k].first, res[k].second, refused[k]));
            return out;
        },
        py::arg("blocks"),
        "Split form, pass 1: moments on the tangential inputs (written); per block the "
        "update's (Σ u·x̃ per row, Σ u·Px̃ per column), float64, and the number of elements "
        "whose new moments were not finite (kept at their pre-step values).");
    m.def(
        "ddc_split_apply",
        [parse_split](const py::list& blocks) {
            auto args = parse_split(blocks, "deadspec.ddc_split_apply");
            std::vector<std::int64_t> refused;
            {
                py::gil_scoped_release nogil;
                ddc_split_apply(args.blocks, refused);
            }
            return refused;
        },
        py::arg("blocks"),
        "Split form, pass 2: the re-projected update applied in place (radial factors "
        "row_mult/col_mult, coefficients of the update in row_coef/col_coef). Returns per block "
        "the number of elements whose new value was not finite (kept at its pre-step value).");

    m.def(
        "ddc_row_norms",
        [](const py::object& weight, const py::object& col_scale, const py::object& bias,
           double weight_factor, double bias_factor) {
            constexpr const char* fn = "deadspec.ddc_row_norms";
            DLPackView vw(weight, fn, "weight");
            std::optional<DLPackView> vc, vb;
            if (!col_scale.is_none()) vc.emplace(col_scale, fn, "col_scale");
            if (!bias.is_none()) vb.emplace(bias, fn, "bias");
            py::gil_scoped_release nogil;
            return ddc_row_norms(vw.view(), vc ? vc->view() : TensorView{},
                                 vb ? vb->view() : TensorView{}, weight_factor, bias_factor);
        },
        py::arg("weight"), py::arg("col_scale") = py::none(), py::arg("bias") = py::none(),
        py::arg("weight_factor") = 1.0, py::arg("bias_factor") = 1.0,
        "Row norms of [f_w·W·diag(col_scale) | f_b·b] (float64).");

    m.def(
        "ddc_gauge_dots",
        [](const py::object& x, const py::object& g, int axis) {
            constexpr const char* fn = "deadspec.ddc_gauge_dots";
            DLPackView vx(x, fn, "x");
            DLPackView vg(g, fn, "g");
            py::gil_scoped_release nogil;
            return ddc_gauge_dots(vx.view(), vg.view(), axis);
        },
        py::arg("x"), py::arg("g"), py::arg("axis"),
        "(Σ x·g, Σ |x·g|) along axis (1: per row, 0: per column), float64.");
}

}  // namespace deadspec::python
