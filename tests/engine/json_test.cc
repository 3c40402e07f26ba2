// uniattn/json_io.h: the bounded nlohmann-json parse the engine's files and the server's bodies share.
#include "uniattn/json_io.h"

#include <gtest/gtest.h>

#include <string>

namespace uniattn {
namespace {

using nlohmann::json;

TEST(JsonTest, ParsesNestedDocument) {
    auto j = ParseJsonFile(
        R"({"a": [1, 2.5, -3e2], "b": {"c": "x\u00e9\n"}, "d": true, "e": null, "big": 9007199254740993})", "t.json");
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    const json* a = JsonFind(*j, "a");
    ASSERT_TRUE(a != nullptr && a->is_array());
    EXPECT_EQ(JsonInt64((*a)[0]), 1);
    EXPECT_DOUBLE_EQ((*a)[1].get<double>(), 2.5);
    EXPECT_FALSE(JsonInt64((*a)[2]).has_value());  // an exponent makes it a float
    EXPECT_EQ((*j)["b"]["c"], "x\xc3\xa9\n");
    EXPECT_EQ((*j)["d"], true);
    EXPECT_TRUE((*j)["e"].is_null());
    EXPECT_EQ(JsonInt64((*j)["big"]), 9007199254740993LL);  // beyond double precision, kept exactly
    EXPECT_EQ(JsonFind(*j, "missing"), nullptr);
    EXPECT_EQ(JsonFind((*j)["a"], "a"), nullptr);  // not an object
}

TEST(JsonTest, Int64OnlyForIntegersThatFit) {
    auto j =
        ParseJsonFile(R"([9223372036854775807, 9223372036854775808, -9223372036854775808, 1.0, 1e3, "1"])", "t.json");
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    EXPECT_EQ(JsonInt64((*j)[0]), INT64_MAX);
    EXPECT_FALSE(JsonInt64((*j)[1]).has_value());
    EXPECT_EQ(JsonInt64((*j)[2]), INT64_MIN);
    for (int i = 3; i < 6; ++i) EXPECT_FALSE(JsonInt64((*j)[i]).has_value()) << i;
}

TEST(JsonTest, RoundTrips) {
    auto j = ParseJsonFile(R"({"k":[1,"two",{"three":3}],"s":"q\"\\"})", "t.json");
    ASSERT_TRUE(j.ok());
    auto again = ParseJsonFile(DumpJson(*j), "t.json (dumped)");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *j);
    EXPECT_EQ(DumpJson(*again), DumpJson(*j));
}

TEST(JsonTest, WrittenObjectsKeepInsertionOrder) {
    OrderedJson j = {{"z", 1}, {"a", OrderedJson::array({1, 2})}};
    j["m"] = "x";
    EXPECT_EQ(DumpJson(j), R"({"z":1,"a":[1,2],"m":"x"})");
    EXPECT_EQ(DumpJson(j, 2), "{\n  \"z\": 1,\n  \"a\": [\n    1,\n    2\n  ],\n  \"m\": \"x\"\n}");
}

TEST(JsonTest, DumpNeverThrowsOnBadUtf8) {
    json j = {{"s", std::string("a\xff")}};
    EXPECT_EQ(DumpJson(j), "{\"s\":\"a\xef\xbf\xbd\"}");
}

TEST(JsonTest, RejectsMalformedInputNamingTheFile) {
    for (const char* bad :
         {"{", "[1,]", "{\"a\" 1}", "\"\\x\"", "01x", "{\"a\":1} x", "\"\\ud800\"", "[\"\x01\"]", "\"\xff\"", ""}) {
        auto j = ParseJsonFile(bad, "test.json");
        ASSERT_FALSE(j.ok()) << bad;
        EXPECT_EQ(j.status().message().find("test.json: invalid JSON: "), 0u) << j.status().message();
    }
}

TEST(JsonTest, NumbersBeyondDoubleNameTheKey) {
    auto j = ParseJsonFile(R"({"a": {"b": [1, 1e400]}})", "test.json");
    ASSERT_FALSE(j.ok());
    EXPECT_EQ(j.status().message(), "test.json: \"a.b[1]\" must be a finite number (number overflow parsing '1e400')");
    json out;
    auto e = ParseJsonBounded(R"({"x": -1e999})", 8, out);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->kind, JsonParseError::Kind::kNumberOverflow);
    EXPECT_EQ(e->path, "x");
    EXPECT_TRUE(out.is_null());  // nothing half-built is left behind
}

TEST(JsonTest, RejectsDeepNesting) {
    std::string deep(10000, '[');
    auto j = ParseJsonFile(deep, "deep.json");
    ASSERT_FALSE(j.ok());
    EXPECT_NE(j.status().message().find("nested deeper than 256 levels"), std::string::npos) << j.status().message();
    // The bound counts containers: exactly max_depth is fine, one more is refused.
    const auto nest = [](int n) { return std::string(n, '[') + std::string(n, ']'); };
    json out;
    EXPECT_FALSE(ParseJsonBounded(nest(64), 64, out).has_value());
    auto e = ParseJsonBounded(nest(65), 64, out);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->kind, JsonParseError::Kind::kTooDeep);
    EXPECT_EQ(e->detail, "nested deeper than 64 levels");
    EXPECT_TRUE(ParseJsonFile(nest(kMaxJsonFileDepth), "ok.json").ok());
    EXPECT_FALSE(ParseJsonFile(nest(kMaxJsonFileDepth + 1), "deep.json").ok());
}

}  // namespace
}  // namespace uniattn
