// SPDX-License-Identifier: Apache-2.0
// A C++ trainer that embeds the deadspec core: libtorch trains a small MLP, deadspec reads the
// hidden layers' signatures (activation Gram → spectrum) at a fixed interval and takes every
// optimizer step (DDCAdam, with the MLP's two ReLU Pairs declared by hand).
//
//   cpp_trainer [--steps 300] [--hidden 64] [--samples 1024] [--batch 64] [--interval 50]
//               [--seed 0] [--lr 0.01] [--weight-decay 0.01] [--optimizer ddc|adamw]
//               [--gauge-scale 1] [--threads 0] [--dump DIR]
//
// Output: one line per event, `kind key=value ...` (reading, eval, gauge, final), then `OK`.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <deadspec/deadspec.hpp>

namespace {

struct Args {
    std::int64_t steps = 300, hidden = 64, samples = 1024, batch = 64, interval = 50;
    std::int64_t inputs = 16, classes = 4, threads = 0;
    std::uint64_t seed = 0;
    double lr = 1e-2, weight_decay = 1e-2, gauge_scale = 1.0;
    std::string optimizer = "ddc", dump;
};

Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string key = argv[i];
        if (key == "--help" || key == "-h") {
            std::printf("usage: cpp_trainer [--steps N] [--hidden H] [--samples N] [--batch B] "
                        "[--interval K] [--seed S] [--lr X] [--weight-decay X] "
                        "[--optimizer ddc|adamw] [--gauge-scale C] [--threads T] [--dump DIR]\n");
            std::exit(0);
        }
        if (i + 1 >= argc) throw std::invalid_argument("cpp_trainer: " + key + " needs a value");
        const std::string v = argv[++i];
        if (key == "--steps") a.steps = std::stoll(v);
        else if (key == "--hidden") a.hidden = std::stoll(v);
        else if (key == "--samples") a.samples = std::stoll(v);
        else if (key == "--batch") a.batch = std::stoll(v);
        else if (key == "--interval") a.interval = std::stoll(v);
        else if (key == "--seed") a.seed = std::stoull(v);
        else if (key == "--lr") a.lr = std::stod(v);
        else if (key == "--weight-decay") a.weight_decay = std::stod(v);
        else if (key == "--optimizer") a.optimizer = v;
        else if (key == "--gauge-scale") a.gauge_scale = std::stod(v);
        else if (key == "--threads") a.threads = std::stoll(v);
        else if (key == "--dump") a.dump = v;
        else throw std::invalid_argument("cpp_trainer: unknown option " + key);
    }
    if (a.steps < 1 || a.hidden < 2 || a.batch < 1 || a.interval < 1 ||
        a.samples % a.batch != 0 || !(a.gauge_scale > 0.0) ||
        (a.optimizer != "ddc" && a.optimizer != "adamw"))
        throw std::invalid_argument(
            "cpp_trainer: expected steps, interval, batch >= 1, hidden >= 2, samples a multiple "
            "of batch, gauge-scale > 0 and optimizer ddc or adamw");
    return a;
}

// The adapter between the two libraries: a deadspec view of a libtorch tensor's memory (CPU,
// contiguous, float32/float64). No copy: the DDC step writes the parameters in place.
deadspec::TensorView view(const torch::Tensor& t) {
    if (!t.defined()) return {};  // a parameter without a gradient
    if (!t.device().is_cpu() || !t.is_contiguous() ||
        (t.scalar_type() != torch::kFloat && t.scalar_type() != torch::kDouble))
        throw std::invalid_argument("cpp_trainer: view expects a contiguous float CPU tensor");
    deadspec::TensorView v;
    v.data = t.data_ptr();
    v.dtype = t.scalar_type() == torch::kFloat ? deadspec::DType::Float32
                                               : deadspec::DType::Float64;
    v.shape = t.sizes().vec();
    v.strides = t.strides().vec();
    return v;
}

struct MLPImpl : torch::nn::Module {
    MLPImpl(std::int64_t in, std::int64_t hidden, std::int64_t out)
        : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
          fc2(register_module("fc2", torch::nn::Linear(hidden, hidden))),
          fc3(register_module("fc3", torch::nn::Linear(hidden, out))) {}

    /// The post-ReLU activations of the two hidden layers.
    std::pair<torch::Tensor, torch::Tensor> hidden(const torch::Tensor& x) {
        torch::Tensor a1 = torch::relu(fc1(x));
        torch::Tensor a2 = torch::relu(fc2(a1));
        return {a1, a2};
    }
    torch::Tensor forward(const torch::Tensor& x) { return fc3(hidden(x).second); }

    torch::nn::Linear fc1, fc2, fc3;
};
TORCH_MODULE(MLP);

// The gauge element the run starts from (--gauge-scale C): hidden unit j of fc1 scaled by
// c_j = C^(2j/(h−1) − 1), unit j of fc2 by c_(h−1−j). ReLU is positively homogeneous, so the
// network function does not change.
std::pair<torch::Tensor, torch::Tensor> gauge_element(const Args& a) {
    const torch::Tensor t = torch::linspace(-1.0, 1.0, a.hidden, torch::kDouble);
    const torch::Tensor c1 = torch::pow(a.gauge_scale, t).to(torch::kFloat);
    return {c1, c1.flip(0)};
}

void apply_gauge(MLP& m, const torch::Tensor& c1, const torch::Tensor& c2) {
    torch::NoGradGuard no_grad;
    m->fc1->weight.mul_(c1.unsqueeze(1));
    m->fc1->bias.mul_(c1);
    m->fc2->weight.mul_(c2.unsqueeze(1)).div_(c1.unsqueeze(0));
    m->fc2->bias.mul_(c2);
    m->fc3->weight.div_(c2.unsqueeze(0));
}

// A tensor as a .npy file (float32, float64 or int64), for the test's Python reference.
void save_npy(const std::string& path, const torch::Tensor& t) {
    const torch::Tensor c = t.detach().contiguous();
    const char* descr = c.scalar_type() == torch::kFloat    ? "<f4"
                        : c.scalar_type() == torch::kDouble ? "<f8"
                                                            : "<i8";
    std::string shape = "(";
    for (const std::int64_t s : c.sizes()) shape += std::to_string(s) + ", ";
    shape += ")";
    std::string header = std::string("{'descr': '") + descr +
                         "', 'fortran_order': False, 'shape': " + shape + ", }";
    header.append(63 - (10 + header.size()) % 64, ' ');
    header += '\n';  // 10 + header is a multiple of 64
    std::ofstream f(path, std::ios::binary);
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    const std::uint16_t len = static_cast<std::uint16_t>(header.size());
    const unsigned char len_le[2] = {static_cast<unsigned char>(len & 0xff),
                                     static_cast<unsigned char>(len >> 8)};
    f.write(reinterpret_cast<const char*>(magic), 8);
    f.write(reinterpret_cast<const char*>(len_le), 2);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(static_cast<const char*>(c.data_ptr()),
            static_cast<std::streamsize>(c.numel() * static_cast<std::int64_t>(c.element_size())));
    if (!f) throw std::runtime_error("cpp_trainer: could not write " + path);
}

void save_params(const std::string& dir, const std::string& prefix, MLP& m) {
    for (const auto& kv : m->named_parameters())
        save_npy(dir + "/" + prefix + kv.key() + ".npy", kv.value());
}

// The signatures of one layer: its activation Gram's spectrum (theory.md §3), with the
// default active-set threshold of deadspec.read (rtol = max(N, h)·ε(float32)).
void read_layer(std::int64_t step, const char* name, const torch::Tensor& acts) {
    const torch::Tensor a = acts.contiguous();
    const deadspec::RowMatrixXd g = deadspec::gram(view(a));
    deadspec::SpectrumOptions opts;
    opts.input_dtype = deadspec::DType::Float32;
    opts.rtol_size = std::max(a.size(0), a.size(1));
    const deadspec::Spectrum s = deadspec::spectrum(deadspec::TensorView::cpu(g), opts);
    std::printf("reading step=%lld layer=%s logdet_plus=%.17g active=%lld dead_count=%lld "
                "lambda_min=%.17g\n",
                static_cast<long long>(step), name, s.logdet_plus,
                static_cast<long long>(s.active), static_cast<long long>(s.dead_count),
                s.lambda_min);
}

// The readings at one step: the full-data loss and accuracy, both hidden layers' signatures
// and (DDCAdam) the range of each site's gauge scale ρ.
double evaluate(std::int64_t step, MLP& m, const torch::Tensor& x, const torch::Tensor& y,
                const deadspec::DDCAdam* ddc) {
    torch::NoGradGuard no_grad;
    const auto [a1, a2] = m->hidden(x);
    read_layer(step, "relu1", a1);
    read_layer(step, "relu2", a2);
    const torch::Tensor logits = m->fc3(a2);
    const double loss = torch::nn::functional::cross_entropy(logits, y).item<double>();
    const double acc = logits.argmax(1).eq(y).to(torch::kDouble).mean().item<double>();
    std::printf("eval step=%lld loss=%.17g accuracy=%.6f\n", static_cast<long long>(step), loss,
                acc);
    if (ddc != nullptr) {
        const char* names[] = {"fc1", "fc2"};
        const std::vector<Eigen::VectorXd> rho = ddc->scales();
        for (std::size_t i = 0; i < rho.size(); ++i)
            std::printf("gauge step=%lld site=%s rho_min=%.6g rho_max=%.6g\n",
                        static_cast<long long>(step), names[i], rho[i].minCoeff(),
                        rho[i].maxCoeff());
    }
    return loss;
}

int run(const Args& a) {
    if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
    torch::manual_seed(a.seed);
    // A teacher-student task: labels from a fixed random tanh network.
    const torch::Tensor x = torch::randn({a.samples, a.inputs});
    const torch::Tensor teacher = torch::randn({a.inputs, 8}) / std::sqrt(double(a.inputs));
    const torch::Tensor y = torch::tanh(x.matmul(teacher)).matmul(torch::randn({8, a.classes}))
                                .argmax(1);
    MLP model(a.inputs, a.hidden, a.classes);
    const auto [c1, c2] = gauge_element(a);
    if (a.gauge_scale != 1.0) apply_gauge(model, c1, c2);
    if (!a.dump.empty()) {
        save_npy(a.dump + "/x.npy", x);
        save_npy(a.dump + "/y.npy", y);
        save_npy(a.dump + "/gauge_c1.npy", c1);
        save_npy(a.dump + "/gauge_c2.npy", c2);
        save_params(a.dump, "init_", model);
    }
    std::printf("cpp_trainer torch=%d.%d.%d deadspec=%s optimizer=%s hidden=%lld steps=%lld "
                "seed=%llu gauge_scale=%g\n",
                TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH,
                DEADSPEC_VERSION_STRING, a.optimizer.c_str(), static_cast<long long>(a.hidden),
                static_cast<long long>(a.steps), static_cast<unsigned long long>(a.seed),
                a.gauge_scale);

    // The parameters in registration order; the two Pairs (fc1 → ReLU → fc2, fc2 → ReLU → fc3)
    // declared on them. DDCAdam keeps views of the parameters and writes through them.
    const std::vector<torch::Tensor> params = model->parameters();
    std::unique_ptr<deadspec::DDCAdam> ddc;
    std::unique_ptr<torch::optim::AdamW> adamw;
    if (a.optimizer == "ddc") {
        std::vector<deadspec::TensorView> views;
        for (const torch::Tensor& p : params) views.push_back(view(p));
        auto& f1 = model->fc1;
        auto& f2 = model->fc2;
        auto& f3 = model->fc3;
        const std::vector<deadspec::GaugeSite> sites = {
            {view(f1->weight), view(f1->bias), {view(f2->weight)}, {}, "fc1"},
            {view(f2->weight), view(f2->bias), {view(f3->weight)}, {}, "fc2"}};
        deadspec::DDCAdamOptions o;
        o.lr = a.lr;
        o.weight_decay = a.weight_decay;
        ddc = std::make_unique<deadspec::DDCAdam>(views, sites, o);
    } else {
        adamw = std::make_unique<torch::optim::AdamW>(
            params, torch::optim::AdamWOptions(a.lr).weight_decay(a.weight_decay));
    }

    std::vector<double> losses;
    const double first = evaluate(0, model, x, y, ddc.get());
    for (std::int64_t t = 0; t < a.steps; ++t) {
        const std::int64_t row = (t * a.batch) % a.samples;  // batches in order, cyclic
        const torch::Tensor xb = x.narrow(0, row, a.batch), yb = y.narrow(0, row, a.batch);
        model->zero_grad();
        const torch::Tensor loss = torch::nn::functional::cross_entropy(model(xb), yb);
        loss.backward();
        losses.push_back(loss.item<double>());
        if (ddc) {
            // Between backward() and the next forward() no saved tensor is alive, so writing
            // the parameters through their data pointers is safe.
            std::vector<deadspec::TensorView> grads;
            for (const torch::Tensor& p : params) grads.push_back(view(p.grad()));
            ddc->step(grads);
        } else {
            adamw->step();
        }
        if ((t + 1) % a.interval == 0) evaluate(t + 1, model, x, y, ddc.get());
    }
    torch::NoGradGuard no_grad;
    const double last =
        torch::nn::functional::cross_entropy(model(x), y).item<double>();
    std::printf("final loss_first=%.17g loss_last=%.17g\n", first, last);
    if (!a.dump.empty()) {
        save_params(a.dump, "final_", model);
        save_npy(a.dump + "/losses.npy", torch::tensor(losses, torch::kDouble));
    }
    std::printf("OK\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
