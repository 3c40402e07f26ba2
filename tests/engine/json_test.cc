#include "uniattn/json.h"

#include <gtest/gtest.h>

namespace uniattn {
namespace {

TEST(JsonTest, ParsesNestedDocument) {
    auto j =
        ParseJson(R"({"a": [1, 2.5, -3e2], "b": {"c": "x\u00e9\n"}, "d": true, "e": null, "big": 9007199254740993})");
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    ASSERT_TRUE(j->Find("a")->is_array());
    EXPECT_EQ(j->Find("a")->array()[0].int_value(), 1);
    EXPECT_DOUBLE_EQ(j->Find("a")->array()[1].number_value(), 2.5);
    EXPECT_FALSE(j->Find("a")->array()[2].is_integer());
    EXPECT_EQ(j->Find("b")->Find("c")->string_value(), "x\xc3\xa9\n");
    EXPECT_TRUE(j->Find("d")->bool_value());
    EXPECT_TRUE(j->Find("e")->is_null());
    EXPECT_EQ(j->Find("big")->int_value(), 9007199254740993LL);  // beyond double precision, kept exactly
}

TEST(JsonTest, RoundTrips) {
    auto j = ParseJson(R"({"k":[1,"two",{"three":3}],"s":"q\"\\"})");
    ASSERT_TRUE(j.ok());
    auto again = ParseJson(j->Dump());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->Dump(), j->Dump());
}

TEST(JsonTest, RejectsMalformedInputWithPosition) {
    for (const char* bad : {"{", "[1,]", "{\"a\" 1}", "\"\\x\"", "01x", "{\"a\":1} x", "\"\\ud800\"", "[\"\x01\"]"}) {
        auto j = ParseJson(bad, "test.json");
        EXPECT_FALSE(j.ok()) << bad;
        EXPECT_NE(j.status().message().find("test.json"), std::string::npos);
    }
}

TEST(JsonTest, RejectsDeepNesting) {
    std::string deep(10000, '[');
    EXPECT_FALSE(ParseJson(deep).ok());
}

}  // namespace
}  // namespace uniattn
