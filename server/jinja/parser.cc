// The parser: Jinja2's grammar (jinja2/parser.py) over the lexer's tokens, to the AST in internal.h.
// Filters and tests are resolved here, so an unknown one is a parse error like Jinja's compile-time
// "No filter named ..." (and so is any tag this renderer does not implement).
#include <unordered_set>

#include "server/jinja/internal.h"

namespace uniattn::jinja::internal {

std::string UnresolvedMessage(const Expr& e) {
    const bool filter = e.kind == Expr::Kind::kFilter;
    // Jinja's own filters and tests that this renderer leaves out.
    static const std::unordered_set<std::string> kJinjaFilters = {"filesizeformat", "format", "groupby",   "pprint",
                                                                  "random",         "slice",  "striptags", "truncate",
                                                                  "urlencode",      "urlize", "wordwrap",  "xmlattr"};
    if (filter && kJinjaFilters.count(e.name)) {
        return "the filter '" + e.name + "' is not supported by this renderer";
    }
    return std::string("no ") + (filter ? "filter" : "test") + " named '" + e.name + "'";
}

namespace {

constexpr int kMaxNesting = 128;  // expression and block nesting: bounds the parser's recursion

class Parser {
  public:
    explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

    Body ParseAll() {
        Body body = Subparse({});
        if (Cur().type != Tok::kEof) FailAt(Cur(), "unexpected token");
        CheckBody(body, false);
        return body;
    }

  private:
    const Token& Cur() const { return tokens_[pos_]; }
    const Token& Look() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
    const Token& Next() {
        const Token& t = tokens_[pos_];
        if (pos_ + 1 < tokens_.size()) ++pos_;
        return t;
    }

    [[noreturn]] void FailAt(const Token& t, const std::string& message) const {
        Fail(Error::Kind::kSyntax, message, t.line, t.column);
    }

    static std::string Describe(const Token& t) {
        switch (t.type) {
            case Tok::kData:
                return "template data";
            case Tok::kVariableBegin:
                return "'{{'";
            case Tok::kVariableEnd:
                return "end of print statement";
            case Tok::kBlockBegin:
                return "'{%'";
            case Tok::kBlockEnd:
                return "end of statement block";
            case Tok::kName:
                return "'" + t.text + "'";
            case Tok::kString:
                return "string";
            case Tok::kInteger:
                return "integer";
            case Tok::kFloat:
                return "float";
            case Tok::kOperator:
                return "'" + t.text + "'";
            case Tok::kEof:
                return "end of template";
        }
        return "?";
    }

    bool IsOp(std::string_view op) const { return Cur().type == Tok::kOperator && Cur().text == op; }
    bool IsName(std::string_view name) const { return Cur().type == Tok::kName && Cur().text == name; }
    bool SkipOp(std::string_view op) {
        if (!IsOp(op)) return false;
        Next();
        return true;
    }
    bool SkipName(std::string_view name) {
        if (!IsName(name)) return false;
        Next();
        return true;
    }
    void ExpectOp(std::string_view op) {
        if (!SkipOp(op)) FailAt(Cur(), "expected '" + std::string(op) + "', got " + Describe(Cur()));
    }
    void ExpectName(std::string_view name) {
        if (!SkipName(name)) FailAt(Cur(), "expected '" + std::string(name) + "', got " + Describe(Cur()));
    }
    std::string ExpectAnyName() {
        if (Cur().type != Tok::kName) FailAt(Cur(), "expected a name, got " + Describe(Cur()));
        return Next().text;
    }
    void Expect(Tok type, const char* what) {
        if (Cur().type != type) FailAt(Cur(), std::string("expected ") + what + ", got " + Describe(Cur()));
        Next();
    }

    class DepthGuard {
      public:
        DepthGuard(Parser* p, const Token& at) : p_(p) {
            if (++p_->depth_ > kMaxNesting) p_->FailAt(at, "the template nests too deeply");
        }
        ~DepthGuard() { --p_->depth_; }

      private:
        Parser* p_;
    };

    ExprPtr MakeExpr(Expr::Kind kind, const Token& at) {
        auto e = std::make_unique<Expr>();
        e->kind = kind;
        e->line = at.line;
        e->column = at.column;
        return e;
    }

    NodePtr MakeNode(Node::Kind kind, const Token& at) {
        auto n = std::make_unique<Node>();
        n->kind = kind;
        n->line = at.line;
        n->column = at.column;
        return n;
    }

    // ---- statements ----

    Body Subparse(const std::vector<std::string_view>& end_tokens) {
        DepthGuard guard(this, Cur());
        Body body;
        while (Cur().type != Tok::kEof) {
            const Token& t = Cur();
            if (t.type == Tok::kData) {
                NodePtr n = MakeNode(Node::Kind::kText, t);
                n->text = t.text;
                body.push_back(std::move(n));
                Next();
            } else if (t.type == Tok::kVariableBegin) {
                Next();
                NodePtr n = MakeNode(Node::Kind::kOutput, t);
                n->expr = ParseTuple(false, true, {}, false);
                Expect(Tok::kVariableEnd, "end of print statement");
                body.push_back(std::move(n));
            } else if (t.type == Tok::kBlockBegin) {
                Next();
                if (Cur().type == Tok::kName) {
                    for (std::string_view end : end_tokens) {
                        if (Cur().text == end) return body;
                    }
                }
                NodePtr n = ParseStatement();
                if (n) body.push_back(std::move(n));
                Expect(Tok::kBlockEnd, "end of statement block");
            } else {
                FailAt(t, "unexpected " + Describe(t));
            }
        }
        if (!end_tokens.empty()) {
            std::string expected;
            for (std::string_view e : end_tokens) expected += (expected.empty() ? "'" : " or '") + std::string(e) + "'";
            FailAt(Cur(), "unexpected end of template: looking for " + expected);
        }
        return body;
    }

    // After the tag's own tokens: `%}`, then the body up to one of end_tokens (left current).
    Body ParseStatements(const std::vector<std::string_view>& end_tokens, bool drop_needle) {
        SkipOp(":");
        Expect(Tok::kBlockEnd, "end of statement block");
        Body body = Subparse(end_tokens);
        if (drop_needle) Next();
        return body;
    }

    NodePtr ParseStatement() {
        const Token& t = Cur();
        if (t.type != Tok::kName) FailAt(t, "tag name expected");
        const std::string& tag = t.text;
        if (tag == "if") return ParseIf();
        if (tag == "for") return ParseFor();
        if (tag == "set") return ParseSet();
        if (tag == "macro") return ParseMacro();
        if (tag == "call") return ParseCallBlock();
        if (tag == "filter") return ParseFilterBlock();
        if (tag == "with") return ParseWith();
        if (tag == "print") return ParsePrint();
        if (tag == "generation") return ParseGeneration();
        if (tag == "break" || tag == "continue") {
            if (loop_depth_ == 0) FailAt(t, "'" + tag + "' outside of a loop");
            NodePtr n = MakeNode(tag == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, t);
            Next();
            return n;
        }
        static const std::unordered_set<std::string> kUnsupported = {
            "include", "import", "from", "extends", "block", "autoescape", "do", "trans", "pluralize"};
        if (kUnsupported.count(tag)) FailAt(t, "the tag '" + tag + "' is not supported by this renderer");
        FailAt(t, "encountered unknown tag '" + tag + "'");
    }

    NodePtr ParseIf() {
        NodePtr n = MakeNode(Node::Kind::kIf, Next());
        while (true) {
            n->conds.push_back(ParseTuple(false, false, {}, false));
            n->bodies.push_back(ParseStatements({"elif", "else", "endif"}, false));
            const Token& tok = Next();
            if (tok.text == "elif") continue;
            if (tok.text == "else") n->else_body = ParseStatements({"endif"}, true);
            break;
        }
        return n;
    }

    // Names (or a tuple of names) for for-loops and set.
    void ParseTargets(Node* n, const std::vector<std::string_view>& extra_end) {
        bool first = true;
        while (true) {
            if (!first) {
                if (!SkipOp(",")) break;
                n->target_is_tuple = true;
            }
            if (!first && IsTupleEnd(extra_end)) break;
            const Token& t = Cur();
            if (t.type != Tok::kName || t.text == "true" || t.text == "false" || t.text == "none" || t.text == "True" ||
                t.text == "False" || t.text == "None") {
                FailAt(t, "can't assign to " + Describe(t));
            }
            n->targets.push_back(Next().text);
            first = false;
        }
    }

    NodePtr ParseFor() {
        NodePtr n = MakeNode(Node::Kind::kFor, Next());
        ParseTargets(n.get(), {"in"});
        ExpectName("in");
        n->expr = ParseTuple(false, false, {"recursive"}, false);
        if (SkipName("if")) n->cond = ParseExpression(true);
        if (IsName("recursive")) FailAt(Cur(), "recursive for-loops are not supported by this renderer");
        ++loop_depth_;
        n->body = ParseStatements({"endfor", "else"}, false);
        --loop_depth_;
        if (Next().text == "else") n->else_body = ParseStatements({"endfor"}, true);
        return n;
    }

    NodePtr ParseSet() {
        const Token& at = Next();
        NodePtr n = MakeNode(Node::Kind::kSet, at);
        if (Cur().type == Tok::kName && Look().type == Tok::kOperator && Look().text == ".") {
            n->ns_name = Next().text;
            Next();
            n->ns_attr = ExpectAnyName();
        } else {
            ParseTargets(n.get(), {});
        }
        if (SkipOp("=")) {
            n->expr = ParseTuple(false, true, {}, false);
            return n;
        }
        if (n->target_is_tuple) FailAt(at, "a block set assigns one name");
        n->kind = Node::Kind::kSetBlock;
        if (IsOp("|")) n->expr = ParseFilter(nullptr, false);
        n->body = ParseStatements({"endset"}, true);
        return n;
    }

    void ParseSignature(MacroDef* m) {
        ExpectOp("(");
        while (!IsOp(")")) {
            if (!m->params.empty()) ExpectOp(",");
            m->params.push_back(ExpectAnyName());
            if (SkipOp("=")) {
                m->defaults.push_back(ParseExpression(true));
            } else if (!m->defaults.empty()) {
                FailAt(Cur(), "non-default argument follows default argument");
            }
        }
        ExpectOp(")");
    }

    Body ParseMacroBody(MacroDef* m, std::string_view end) {
        const int saved_loop_depth = loop_depth_;
        loop_depth_ = 0;
        macro_refs_.emplace_back();
        m->body = ParseStatements({end}, true);
        const auto& refs = macro_refs_.back();
        m->uses_varargs = refs.count("varargs") > 0;
        m->uses_kwargs = refs.count("kwargs") > 0;
        m->uses_caller = refs.count("caller") > 0;
        macro_refs_.pop_back();
        loop_depth_ = saved_loop_depth;
        return {};
    }

    NodePtr ParseMacro() {
        NodePtr n = MakeNode(Node::Kind::kMacro, Next());
        n->macro = std::make_shared<MacroDef>();
        n->macro->name = ExpectAnyName();
        ParseSignature(n->macro.get());
        ParseMacroBody(n->macro.get(), "endmacro");
        return n;
    }

    NodePtr ParseCallBlock() {
        const Token& at = Next();
        NodePtr n = MakeNode(Node::Kind::kCallBlock, at);
        n->macro = std::make_shared<MacroDef>();
        n->macro->name = "caller";
        if (IsOp("(")) ParseSignature(n->macro.get());
        n->expr = ParseExpression(true);
        if (n->expr->kind != Expr::Kind::kCall) FailAt(at, "expected call");
        ParseMacroBody(n->macro.get(), "endcall");
        return n;
    }

    NodePtr ParseFilterBlock() {
        NodePtr n = MakeNode(Node::Kind::kFilterBlock, Next());
        n->expr = ParseFilter(nullptr, true);
        n->body = ParseStatements({"endfilter"}, true);
        return n;
    }

    NodePtr ParseWith() {
        NodePtr n = MakeNode(Node::Kind::kWith, Next());
        while (Cur().type != Tok::kBlockEnd) {
            if (!n->targets.empty()) ExpectOp(",");
            n->targets.push_back(ExpectAnyName());
            ExpectOp("=");
            n->values.push_back(ParseExpression(true));
        }
        n->body = ParseStatements({"endwith"}, true);
        return n;
    }

    NodePtr ParsePrint() {
        const Token& at = Next();
        NodePtr n = MakeNode(Node::Kind::kOutput, at);
        ExprPtr tuple = MakeExpr(Expr::Kind::kTuple, at);
        while (Cur().type != Tok::kBlockEnd) {
            if (!tuple->items.empty()) ExpectOp(",");
            tuple->items.push_back(ParseExpression(true));
        }
        // {% print a, b %} prints each expression in turn.
        NodePtr scope = MakeNode(Node::Kind::kScope, at);
        scope->text = "print";
        for (ExprPtr& e : tuple->items) {
            NodePtr out = MakeNode(Node::Kind::kOutput, at);
            out->expr = std::move(e);
            scope->body.push_back(std::move(out));
        }
        return scope;
    }

    // transformers' AssistantTracker: {% generation %}...{% endgeneration %} renders its body (as a call
    // block, so in its own scope).
    NodePtr ParseGeneration() {
        NodePtr n = MakeNode(Node::Kind::kScope, Next());
        n->text = "generation";
        const int saved_loop_depth = loop_depth_;
        loop_depth_ = 0;
        n->body = ParseStatements({"endgeneration"}, true);
        loop_depth_ = saved_loop_depth;
        return n;
    }

    // ---- expressions ----

    bool IsTupleEnd(const std::vector<std::string_view>& extra_end) const {
        const Token& t = Cur();
        if (t.type == Tok::kVariableEnd || t.type == Tok::kBlockEnd || (t.type == Tok::kOperator && t.text == ")")) {
            return true;
        }
        if (t.type == Tok::kName) {
            for (std::string_view e : extra_end) {
                if (t.text == e) return true;
            }
        }
        return false;
    }

    ExprPtr ParseTuple(bool simplified, bool with_condexpr, const std::vector<std::string_view>& extra_end,
                       bool explicit_parentheses) {
        const Token& at = Cur();
        std::vector<ExprPtr> args;
        bool is_tuple = false;
        while (true) {
            if (!args.empty()) ExpectOp(",");
            if (IsTupleEnd(extra_end)) break;
            args.push_back(simplified ? ParsePrimary() : ParseExpression(with_condexpr));
            if (IsOp(",")) {
                is_tuple = true;
            } else {
                break;
            }
        }
        if (!is_tuple) {
            if (!args.empty()) return std::move(args[0]);
            if (!explicit_parentheses) FailAt(Cur(), "expected an expression, got " + Describe(Cur()));
        }
        ExprPtr t = MakeExpr(Expr::Kind::kTuple, at);
        t->items = std::move(args);
        return t;
    }

    ExprPtr ParseExpression(bool with_condexpr) { return with_condexpr ? ParseCondExpr() : ParseOr(); }

    ExprPtr ParseCondExpr() {
        DepthGuard guard(this, Cur());
        ExprPtr expr1 = ParseOr();
        while (IsName("if")) {
            const Token& at = Next();
            ExprPtr expr2 = ParseOr();
            ExprPtr expr3;
            if (SkipName("else")) expr3 = ParseCondExpr();
            ExprPtr c = MakeExpr(Expr::Kind::kCondExpr, at);
            c->a = std::move(expr2);
            c->b = std::move(expr1);
            c->c = std::move(expr3);
            expr1 = std::move(c);
        }
        return expr1;
    }

    ExprPtr ParseOr() {
        ExprPtr left = ParseAnd();
        while (IsName("or")) {
            const Token& at = Next();
            ExprPtr e = MakeExpr(Expr::Kind::kOr, at);
            e->a = std::move(left);
            e->b = ParseAnd();
            left = std::move(e);
        }
        return left;
    }

    ExprPtr ParseAnd() {
        ExprPtr left = ParseNot();
        while (IsName("and")) {
            const Token& at = Next();
            ExprPtr e = MakeExpr(Expr::Kind::kAnd, at);
            e->a = std::move(left);
            e->b = ParseNot();
            left = std::move(e);
        }
        return left;
    }

    ExprPtr ParseNot() {
        if (IsName("not")) {
            const Token& at = Next();
            DepthGuard guard(this, at);
            ExprPtr e = MakeExpr(Expr::Kind::kNot, at);
            e->a = ParseNot();
            return e;
        }
        return ParseCompare();
    }

    ExprPtr ParseCompare() {
        const Token& at = Cur();
        ExprPtr expr = ParseMath1();
        ExprPtr cmp;
        while (true) {
            std::string op;
            if (Cur().type == Tok::kOperator && (Cur().text == "==" || Cur().text == "!=" || Cur().text == "<" ||
                                                 Cur().text == "<=" || Cur().text == ">" || Cur().text == ">=")) {
                op = Next().text;
            } else if (SkipName("in")) {
                op = "in";
            } else if (IsName("not") && Look().type == Tok::kName && Look().text == "in") {
                Next();
                Next();
                op = "notin";
            } else {
                break;
            }
            if (!cmp) {
                cmp = MakeExpr(Expr::Kind::kCompare, at);
                cmp->a = std::move(expr);
            }
            cmp->ops.push_back(op);
            cmp->items.push_back(ParseMath1());
        }
        return cmp ? std::move(cmp) : std::move(expr);
    }

    ExprPtr Binary(const Token& at, const std::string& op, ExprPtr left, ExprPtr right) {
        ExprPtr e = MakeExpr(Expr::Kind::kBinary, at);
        e->name = op;
        e->a = std::move(left);
        e->b = std::move(right);
        return e;
    }

    ExprPtr ParseMath1() {
        ExprPtr left = ParseConcat();
        while (IsOp("+") || IsOp("-")) {
            const Token& at = Next();
            left = Binary(at, at.text, std::move(left), ParseConcat());
        }
        return left;
    }

    ExprPtr ParseConcat() {
        const Token& at = Cur();
        ExprPtr first = ParseMath2();
        if (!IsOp("~")) return first;
        ExprPtr e = MakeExpr(Expr::Kind::kConcat, at);
        e->items.push_back(std::move(first));
        while (SkipOp("~")) e->items.push_back(ParseMath2());
        return e;
    }

    ExprPtr ParseMath2() {
        ExprPtr left = ParsePow();
        while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
            const Token& at = Next();
            left = Binary(at, at.text, std::move(left), ParsePow());
        }
        return left;
    }

    ExprPtr ParsePow() {
        ExprPtr left = ParseUnary(true);
        while (IsOp("**")) {
            const Token& at = Next();
            left = Binary(at, "**", std::move(left), ParseUnary(true));
        }
        return left;
    }

    ExprPtr ParseUnary(bool with_filter) {
        const Token& at = Cur();
        DepthGuard guard(this, at);
        ExprPtr node;
        if (IsOp("-") || IsOp("+")) {
            Next();
            node = MakeExpr(at.text == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos, at);
            node->a = ParseUnary(false);
        } else {
            node = ParsePrimary();
        }
        node = ParsePostfix(std::move(node));
        if (with_filter) node = ParseFilterExpr(std::move(node));
        return node;
    }

    ExprPtr ParsePrimary() {
        const Token& t = Cur();
        DepthGuard guard(this, t);
        if (t.type == Tok::kName) {
            Next();
            ExprPtr e = MakeExpr(Expr::Kind::kConst, t);
            if (t.text == "true" || t.text == "True") {
                e->value = Value(true);
            } else if (t.text == "false" || t.text == "False") {
                e->value = Value(false);
            } else if (t.text == "none" || t.text == "None") {
                e->value = Value::None();
            } else {
                e->kind = Expr::Kind::kName;
                e->name = t.text;
                for (auto& refs : macro_refs_) refs.insert(t.text);
            }
            return e;
        }
        if (t.type == Tok::kString) {
            std::string s;
            while (Cur().type == Tok::kString) s += Next().text;
            ExprPtr e = MakeExpr(Expr::Kind::kConst, t);
            e->value = Value(std::move(s));
            return e;
        }
        if (t.type == Tok::kInteger || t.type == Tok::kFloat) {
            Next();
            ExprPtr e = MakeExpr(Expr::Kind::kConst, t);
            e->value = t.type == Tok::kInteger ? Value(t.int_value) : Value(t.float_value);
            return e;
        }
        if (IsOp("(")) {
            Next();
            ExprPtr e = ParseTuple(false, true, {}, true);
            ExpectOp(")");
            return e;
        }
        if (IsOp("[")) {
            Next();
            ExprPtr e = MakeExpr(Expr::Kind::kList, t);
            while (!IsOp("]")) {
                if (!e->items.empty()) ExpectOp(",");
                if (IsOp("]")) break;
                e->items.push_back(ParseExpression(true));
            }
            ExpectOp("]");
            return e;
        }
        if (IsOp("{")) {
            Next();
            ExprPtr e = MakeExpr(Expr::Kind::kDict, t);
            while (!IsOp("}")) {
                if (!e->items.empty()) ExpectOp(",");
                if (IsOp("}")) break;
                e->items.push_back(ParseExpression(true));
                ExpectOp(":");
                e->items.push_back(ParseExpression(true));
            }
            ExpectOp("}");
            return e;
        }
        FailAt(t, "unexpected " + Describe(t));
    }

    ExprPtr ParsePostfix(ExprPtr node) {
        while (true) {
            if (IsOp(".") || IsOp("[")) {
                node = ParseSubscript(std::move(node));
            } else if (IsOp("(")) {
                node = ParseCall(std::move(node));
            } else {
                break;
            }
        }
        return node;
    }

    ExprPtr ParseFilterExpr(ExprPtr node) {
        while (true) {
            if (IsOp("|")) {
                node = ParseFilter(std::move(node), false);
            } else if (IsName("is")) {
                node = ParseTest(std::move(node));
            } else if (IsOp("(")) {
                node = ParseCall(std::move(node));
            } else {
                break;
            }
        }
        return node;
    }

    ExprPtr ParseSubscript(ExprPtr node) {
        const Token& at = Next();
        DepthGuard guard(this, at);
        if (at.text == ".") {
            const Token& attr = Next();
            if (attr.type == Tok::kName) {
                ExprPtr e = MakeExpr(Expr::Kind::kGetAttr, at);
                e->a = std::move(node);
                e->name = attr.text;
                return e;
            }
            if (attr.type != Tok::kInteger) FailAt(attr, "expected name or number");
            ExprPtr e = MakeExpr(Expr::Kind::kGetItem, at);
            e->a = std::move(node);
            e->b = MakeExpr(Expr::Kind::kConst, attr);
            e->b->value = Value(attr.int_value);
            return e;
        }
        std::vector<ExprPtr> args;
        while (!IsOp("]")) {
            if (!args.empty()) ExpectOp(",");
            args.push_back(ParseSubscribed());
        }
        ExpectOp("]");
        if (args.size() == 1 && args[0]->kind == Expr::Kind::kSlice) {
            args[0]->a = std::move(node);
            return std::move(args[0]);
        }
        ExprPtr e = MakeExpr(Expr::Kind::kGetItem, at);
        e->a = std::move(node);
        if (args.size() == 1) {
            e->b = std::move(args[0]);
        } else {
            for (const ExprPtr& arg : args) {
                if (arg->kind == Expr::Kind::kSlice) FailAt(at, "tuples of slices are not supported");
            }
            e->b = MakeExpr(Expr::Kind::kTuple, at);
            e->b->items = std::move(args);
        }
        return e;
    }

    // One subscript: an expression or a slice [start]:[stop][:[step]]. A slice comes back as kSlice with
    // items = {start, stop, step} (null when omitted) and `a` to be filled by the caller.
    ExprPtr ParseSubscribed() {
        const Token& at = Cur();
        std::vector<ExprPtr> parts;
        if (IsOp(":")) {
            Next();
            parts.push_back(nullptr);
        } else {
            ExprPtr node = ParseExpression(true);
            if (!IsOp(":")) return node;
            Next();
            parts.push_back(std::move(node));
        }
        if (IsOp(":")) {
            parts.push_back(nullptr);
        } else if (!IsOp("]") && !IsOp(",")) {
            parts.push_back(ParseExpression(true));
        } else {
            parts.push_back(nullptr);
        }
        if (IsOp(":")) {
            Next();
            if (!IsOp("]") && !IsOp(",")) {
                parts.push_back(ParseExpression(true));
            } else {
                parts.push_back(nullptr);
            }
        } else {
            parts.push_back(nullptr);
        }
        ExprPtr e = MakeExpr(Expr::Kind::kSlice, at);
        e->items = std::move(parts);
        return e;
    }

    void ParseCallArgs(Expr* e) {
        const Token& at = Cur();
        ExpectOp("(");
        bool require_comma = false;
        while (!IsOp(")")) {
            if (require_comma) {
                ExpectOp(",");
                if (IsOp(")")) break;
            }
            if (IsOp("*") || IsOp("**")) FailAt(Cur(), "*args and **kwargs in calls are not supported");
            if (Cur().type == Tok::kName && Look().type == Tok::kOperator && Look().text == "=") {
                Keyword kw;
                kw.name = Next().text;
                Next();
                kw.value = ParseExpression(true);
                e->kwargs.push_back(std::move(kw));
            } else {
                if (!e->kwargs.empty()) FailAt(at, "invalid syntax for function call expression");
                e->items.push_back(ParseExpression(true));
            }
            require_comma = true;
        }
        ExpectOp(")");
    }

    ExprPtr ParseCall(ExprPtr node) {
        const Token& at = Cur();
        DepthGuard guard(this, at);
        ExprPtr e = MakeExpr(Expr::Kind::kCall, at);
        e->a = std::move(node);
        ParseCallArgs(e.get());
        return e;
    }

    ExprPtr ParseFilter(ExprPtr node, bool start_inline) {
        while (IsOp("|") || start_inline) {
            if (!start_inline) Next();
            start_inline = false;
            const Token& name_tok = Cur();
            std::string name = ExpectAnyName();
            while (SkipOp(".")) name += "." + ExpectAnyName();
            ExprPtr e = MakeExpr(Expr::Kind::kFilter, name_tok);
            e->name = name;
            e->resolved = FindFilter(name);
            e->a = std::move(node);
            if (IsOp("(")) ParseCallArgs(e.get());
            node = std::move(e);
        }
        return node;
    }

    ExprPtr ParseTest(ExprPtr node) {
        const Token& at = Next();  // 'is'
        const bool negated = SkipName("not");
        const Token& name_tok = Cur();
        std::string name = ExpectAnyName();
        while (SkipOp(".")) name += "." + ExpectAnyName();
        ExprPtr e = MakeExpr(Expr::Kind::kTest, name_tok);
        e->name = name;
        e->resolved = FindTest(name);
        e->a = std::move(node);
        const Token& c = Cur();
        if (IsOp("(")) {
            ParseCallArgs(e.get());
        } else if ((c.type == Tok::kName || c.type == Tok::kString || c.type == Tok::kInteger ||
                    c.type == Tok::kFloat || IsOp("[") || IsOp("{")) &&
                   !(c.type == Tok::kName && (c.text == "else" || c.text == "or" || c.text == "and"))) {
            if (IsName("is")) FailAt(c, "you cannot chain multiple tests with is");
            ExprPtr arg = ParsePostfix(ParsePrimary());
            e->items.push_back(std::move(arg));
        }
        if (!negated) return e;
        ExprPtr n = MakeExpr(Expr::Kind::kNot, at);
        n->a = std::move(e);
        return n;
    }

    // Jinja reports an unknown filter or test when it compiles the template, except directly inside an `if`
    // (its test and bodies, not loops or macros within) or an inline if-expression, where the error waits
    // until the filter is called. The same here: those stay unresolved and fail when evaluated.
    void CheckExpr(const Expr* e, bool soft) {
        if (!e) return;
        if (e->kind == Expr::Kind::kCondExpr) soft = true;
        if ((e->kind == Expr::Kind::kFilter || e->kind == Expr::Kind::kTest) && !e->resolved && !soft) {
            Fail(Error::Kind::kSyntax, UnresolvedMessage(*e), e->line, e->column);
        }
        CheckExpr(e->a.get(), soft);
        CheckExpr(e->b.get(), soft);
        CheckExpr(e->c.get(), soft);
        for (const ExprPtr& item : e->items) CheckExpr(item.get(), soft);
        for (const Keyword& kw : e->kwargs) CheckExpr(kw.value.get(), soft);
    }

    void CheckBody(const Body& body, bool soft) {
        for (const NodePtr& n : body) CheckNode(*n, soft);
    }

    void CheckNode(const Node& n, bool soft) {
        switch (n.kind) {
            case Node::Kind::kIf:
                for (const ExprPtr& c : n.conds) CheckExpr(c.get(), true);
                for (const Body& b : n.bodies) CheckBody(b, true);
                CheckBody(n.else_body, true);
                return;
            case Node::Kind::kFor:
                CheckExpr(n.expr.get(), soft);
                CheckExpr(n.cond.get(), false);
                CheckBody(n.body, false);
                CheckBody(n.else_body, false);
                return;
            case Node::Kind::kMacro:
            case Node::Kind::kCallBlock:
                CheckExpr(n.expr.get(), soft);
                for (const ExprPtr& d : n.macro->defaults) CheckExpr(d.get(), false);
                CheckBody(n.macro->body, false);
                return;
            case Node::Kind::kWith:
                for (const ExprPtr& v : n.values) CheckExpr(v.get(), soft);
                CheckBody(n.body, false);
                return;
            case Node::Kind::kSetBlock:
            case Node::Kind::kFilterBlock:
                CheckExpr(n.expr.get(), false);
                CheckBody(n.body, false);
                return;
            case Node::Kind::kScope:
                CheckBody(n.body, n.text == "print" ? soft : false);
                return;
            case Node::Kind::kText:
            case Node::Kind::kOutput:
            case Node::Kind::kSet:
            case Node::Kind::kBreak:
            case Node::Kind::kContinue:
                CheckExpr(n.expr.get(), soft);
                return;
        }
    }

    std::vector<Token> tokens_;
    size_t pos_ = 0;
    int depth_ = 0;
    int loop_depth_ = 0;
    std::vector<std::unordered_set<std::string>> macro_refs_;
};

}  // namespace

Body ParseTemplate(std::string_view source) { return Parser(Tokenize(source)).ParseAll(); }

}  // namespace uniattn::jinja::internal
