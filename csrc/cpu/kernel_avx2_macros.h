// Included right after a `#pragma GCC target` that enables AVX2 + FMA + F16C: the pragma does not
// define the ISA macros that at::vec and sleef.h test, so they are defined here.
// No include guard on purpose: it must take effect in each translation unit that includes it.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
