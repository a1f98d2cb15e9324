// Loads and stores between the input dtype and the accumulation dtype, shared by the vectorized
// CPU kernels. Included after a kernel translation unit switched the instruction set, so it lives
// in `inline namespace CPU_CAPABILITY` like the kernels that use it.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace smoothing_ext::vec_io {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// One accumulation vector from size() elements (bfloat16/float16 widened to float).
template <typename scalar_t, typename acc_t>
inline Vectorized<acc_t> vload(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vectorized<acc_t>::loadu(p);
  } else {
    Vectorized<float> out;
    at::vec::load_to_float(p, out);
    return out;
  }
}

// Stores two accumulation vectors (2 * size() elements).
template <typename scalar_t, typename acc_t>
inline void vstore2(scalar_t* p, const Vectorized<acc_t>& a, const Vectorized<acc_t>& b) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    a.store(p);
    b.store(p + Vectorized<acc_t>::size());
  } else {
    at::vec::convert_from_float<scalar_t>(a, b).store(p);
  }
}

// Stores one accumulation vector (size() elements).
template <typename scalar_t, typename acc_t>
inline void vstore1(scalar_t* p, const Vectorized<acc_t>& a) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    a.store(p);
  } else {
    at::vec::convert_from_float<scalar_t>(a, a).store(p, Vectorized<acc_t>::size());
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace smoothing_ext::vec_io
