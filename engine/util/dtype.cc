#include "uniattn/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace uniattn {

const char* DTypeName(DType dtype) {
    switch (dtype) {
        case DType::kF32:
            return "F32";
        case DType::kF16:
            return "F16";
        case DType::kBF16:
            return "BF16";
        case DType::kF8E4M3:
            return "F8_E4M3";
    }
    return "?";
}

int DTypeBytes(DType dtype) {
    switch (dtype) {
        case DType::kF32:
            return 4;
        case DType::kF16:
        case DType::kBF16:
            return 2;
        case DType::kF8E4M3:
            return 1;
    }
    return 0;
}

StatusOr<DType> ParseDType(const std::string& name) {
    if (name == "F32") return DType::kF32;
    if (name == "F16") return DType::kF16;
    if (name == "BF16") return DType::kBF16;
    if (name == "F8_E4M3") return DType::kF8E4M3;
    if (name == "F8_E5M2") {
        return Unimplemented(
            "unsupported dtype \"F8_E5M2\": fp8 e5m2 tensors are not supported (FP8 checkpoints "
            "for inference store F8_E4M3)");
    }
    return Unimplemented("unsupported dtype \"" + name + "\" (supported: F32, F16, BF16, F8_E4M3)");
}

float HalfToFloat(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while ((mant & 0x400) == 0) {
                mant <<= 1;
                --exp;
            }
            mant &= 0x3FF;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t FloatToHalf(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
    const uint32_t absx = x & 0x7FFFFFFF;
    if (absx >= 0x7F800000) return sign | (absx > 0x7F800000 ? 0x7E00 : 0x7C00);  // NaN / Inf
    if (absx >= 0x477FF000) return sign | 0x7C00;                                 // overflow to Inf
    if (absx < 0x38800000) {                                                      // subnormal or zero
        if (absx < 0x33000000) return sign;
        const uint32_t e = absx >> 23;
        const uint32_t m = (absx & 0x7FFFFF) | 0x800000;
        const uint32_t shift = 126 - e;  // 14 + (113 - e) - 1 ... shifts m into a 10-bit subnormal
        uint32_t half_m = m >> (shift - 0);
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half_m & 1))) ++half_m;
        return sign | static_cast<uint16_t>(half_m);
    }
    uint32_t bits = absx - 0x38000000;  // rebias exponent 127 -> 15
    const uint32_t rem = bits & 0x1FFF;
    bits >>= 13;
    if (rem > 0x1000 || (rem == 0x1000 && (bits & 1))) ++bits;
    return sign | static_cast<uint16_t>(bits);
}

float BF16ToFloat(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t FloatToBF16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
    const uint32_t rounding = 0x7FFF + ((x >> 16) & 1);
    return static_cast<uint16_t>((x + rounding) >> 16);
}

float Fp8E4M3ToFloat(uint8_t b) {
    const float sign = (b & 0x80) ? -1.0f : 1.0f;
    const int exp = (b >> 3) & 0xF, mant = b & 0x7;
    if (exp == 0xF && mant == 0x7) return std::numeric_limits<float>::quiet_NaN();
    if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant · 2^-9
    return sign * std::ldexp(static_cast<float>(8 + mant), exp - 10);      // (1 + mant/8) · 2^(exp-7)
}

uint8_t FloatToFp8E4M3(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint8_t sign = static_cast<uint8_t>((x >> 24) & 0x80);
    const uint32_t absx = x & 0x7FFFFFFF;
    if (absx > 0x7F800000) return 0x7F;          // NaN
    if (absx >= 0x43E00000) return sign | 0x7E;  // >= 448 (and inf): saturate to 448
    if (absx < 0x3C800000) {                     // below 2^-6: subnormal steps of 2^-9, exact scaling by 512
        float a;
        std::memcpy(&a, &absx, 4);
        const uint32_t q = static_cast<uint32_t>(std::nearbyint(a * 512.0f));  // ties to even; 8 is 2^-6
        return sign | static_cast<uint8_t>(q);
    }
    // Normal: rebias 127 -> 7 and round the 23-bit mantissa to 3 bits, ties to even (a carry moves the exponent).
    uint32_t code = (((absx >> 23) - 120) << 3) | ((absx >> 20) & 0x7);
    const uint32_t rem = absx & 0xFFFFF;
    if (rem > 0x80000 || (rem == 0x80000 && (code & 1))) ++code;
    return sign | static_cast<uint8_t>(code);  // below 448 rounding reaches at most 0x7E
}

namespace {

// Every 16-bit pattern's conversion, built once from the scalar functions above (so equal to them by
// construction): fp16 -> fp32 (HalfToFloat normalises subnormals in a loop), fp16 <-> bf16.
struct Tables {
    std::vector<float> half_to_float = std::vector<float>(1 << 16);
    std::vector<uint16_t> half_to_bf16 = std::vector<uint16_t>(1 << 16);
    std::vector<uint16_t> bf16_to_half = std::vector<uint16_t>(1 << 16);
    std::vector<float> fp8_to_float = std::vector<float>(256);
    Tables() {
        for (uint32_t b = 0; b < 256; ++b) fp8_to_float[b] = Fp8E4M3ToFloat(static_cast<uint8_t>(b));
        for (uint32_t h = 0; h < (1u << 16); ++h) {
            half_to_float[h] = HalfToFloat(static_cast<uint16_t>(h));
            half_to_bf16[h] = FloatToBF16(half_to_float[h]);
            bf16_to_half[h] = FloatToHalf(BF16ToFloat(static_cast<uint16_t>(h)));
        }
    }
};

const Tables& GetTables() {
    static const Tables tables;
    return tables;
}

inline uint16_t Load16(const uint8_t* p, int64_t i) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    return v;
}
inline float Load32(const uint8_t* p, int64_t i) {
    float v;
    std::memcpy(&v, p + 4 * i, 4);
    return v;
}
inline void Store16(uint8_t* p, int64_t i, uint16_t v) { std::memcpy(p + 2 * i, &v, 2); }
inline void Store32(uint8_t* p, int64_t i, float v) { std::memcpy(p + 4 * i, &v, 4); }

// 16-bit -> 16-bit through a table.
inline void Map16(const uint8_t* s, uint8_t* d, int64_t n, const uint16_t* table) {
    for (int64_t i = 0; i < n; ++i) Store16(d, i, table[Load16(s, i)]);
}

}  // namespace

void ConvertDType(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n) {
    if (n <= 0) return;
    const auto* s = static_cast<const uint8_t*>(src);
    auto* d = static_cast<uint8_t*>(dst);
    if (src_dtype == dst_dtype) {
        std::memcpy(d, s, static_cast<size_t>(n) * DTypeBytes(src_dtype));
        return;
    }
    if (src_dtype == DType::kF8E4M3 || dst_dtype == DType::kF8E4M3) {  // through fp32, a piece at a time
        constexpr int64_t kPiece = 1024;
        float buf[kPiece];
        const float* fp8 = GetTables().fp8_to_float.data();
        const int in_elem = DTypeBytes(src_dtype), out_elem = DTypeBytes(dst_dtype);
        for (int64_t at = 0; at < n; at += kPiece) {
            const int64_t m = std::min(kPiece, n - at);
            if (src_dtype == DType::kF8E4M3) {
                for (int64_t i = 0; i < m; ++i) buf[i] = fp8[s[at + i]];
            } else {
                ConvertDType(s + at * in_elem, src_dtype, buf, DType::kF32, m);
            }
            if (dst_dtype == DType::kF8E4M3) {
                for (int64_t i = 0; i < m; ++i) d[at + i] = FloatToFp8E4M3(buf[i]);
            } else {
                ConvertDType(buf, DType::kF32, d + at * out_elem, dst_dtype, m);
            }
        }
        return;
    }
    switch (src_dtype) {
        case DType::kF8E4M3:
            return;  // handled above
        case DType::kF32:
            switch (dst_dtype) {
                case DType::kF32:
                    break;  // equal dtypes: copied above
                case DType::kF16:
                    for (int64_t i = 0; i < n; ++i) Store16(d, i, FloatToHalf(Load32(s, i)));
                    break;
                case DType::kBF16:
                    for (int64_t i = 0; i < n; ++i) Store16(d, i, FloatToBF16(Load32(s, i)));
                    break;
                case DType::kF8E4M3:
                    break;  // handled above
            }
            return;
        case DType::kF16:
            switch (dst_dtype) {
                case DType::kF32: {
                    const float* table = GetTables().half_to_float.data();
                    for (int64_t i = 0; i < n; ++i) Store32(d, i, table[Load16(s, i)]);
                    break;
                }
                case DType::kF16:
                    break;
                case DType::kBF16:
                    Map16(s, d, n, GetTables().half_to_bf16.data());
                    break;
                case DType::kF8E4M3:
                    break;
            }
            return;
        case DType::kBF16:
            switch (dst_dtype) {
                case DType::kF32:
                    for (int64_t i = 0; i < n; ++i) Store32(d, i, BF16ToFloat(Load16(s, i)));
                    break;
                case DType::kF16:
                    Map16(s, d, n, GetTables().bf16_to_half.data());
                    break;
                case DType::kBF16:
                case DType::kF8E4M3:
                    break;
            }
            return;
    }
}

}  // namespace uniattn
