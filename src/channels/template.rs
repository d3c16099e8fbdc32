//! The words of every channel as templates: the built-in wording is a
//! template like any organisation's own (`templates` in the settings), and
//! both are rendered by `minijinja` with the same rules.
//!
//! A template is data from a seller, so before it is rendered its syntax
//! tree is checked against a small language: text, `{{ variable.path }}`
//! with a few filters, and `{% if %}`/`{% elif %}`/`{% else %}` on variables.
//! No loops, assignments, macros, includes, calls or arithmetic: so no
//! template can repeat, build a large string, read a file or another
//! template, and its output is bounded by its size times the variables'
//! caps. Every variable is capped and checked against the list below; the
//! rendering is also bounded by fuel and by an output cap, and a template
//! over its size is refused. Every variable is escaped on output by the
//! engine's formatter for its part: HTML (`& < > " '`), Slack's mrkdwn,
//! Teams' markdown; a template cannot mark anything safe (no `safe` filter
//! exists), and text the template writes itself is its own.
//!
//! Variables (docs/contract.md and the README list them with examples):
//! `offer.{id,name,marketplace,status,expiry,url}`,
//! `contact.{id,name,role,company}`, `seller.name`,
//! `event.{id,recipientCount}`, `customFields.NAME`.

use std::collections::BTreeMap;
use std::io;

use minijinja::machinery::ast::{self, CallArg, Expr, Stmt};
use minijinja::machinery::{WhitespaceConfig, parse};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, UndefinedBehavior, Value};
use serde::Serialize;

use crate::model::{Contact, NotificationSettings, Offer};

use super::offer_text::{marketplace, offer_name, offer_url, single_line, truncate_chars};

/// One templated part of a channel's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    EmailSubject,
    EmailText,
    EmailHtml,
    Sms,
    Slack,
    Teams,
}

/// How a part's variables are escaped on output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Html,
    SlackMrkdwn,
    TeamsMarkdown,
}

impl Part {
    /// Its name in the settings (`templates.email.subject`, ...) and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Part::EmailSubject => "email.subject",
            Part::EmailText => "email.text",
            Part::EmailHtml => "email.html",
            Part::Sms => "sms",
            Part::Slack => "slack",
            Part::Teams => "microsoftTeams",
        }
    }

    /// The largest template accepted, in bytes.
    pub fn max_template_bytes(self) -> usize {
        match self {
            Part::EmailSubject | Part::Sms => 1_000,
            Part::Slack => 3_000,
            Part::Teams => 8 * 1024,
            Part::EmailText => 16 * 1024,
            Part::EmailHtml => 32 * 1024,
        }
    }

    /// The largest output accepted, in bytes; a render past it fails.
    pub fn max_output_bytes(self) -> usize {
        match self {
            // The subject is then cut to one line of 200 characters.
            Part::EmailSubject => 4_000,
            // SNS refuses an SMS over 1,600 bytes.
            Part::Sms => 1_600,
            // Slack's section text limit (characters; bytes are stricter).
            Part::Slack => 3_000,
            Part::Teams => 16 * 1024,
            Part::EmailText => 32 * 1024,
            Part::EmailHtml => 64 * 1024,
        }
    }

    fn escape(self) -> Escape {
        match self {
            Part::EmailHtml => Escape::Html,
            Part::Slack => Escape::SlackMrkdwn,
            Part::Teams => Escape::TeamsMarkdown,
            Part::EmailSubject | Part::EmailText | Part::Sms => Escape::None,
        }
    }

    /// The built-in wording.
    pub fn default_source(self) -> &'static str {
        match self {
            Part::EmailSubject => "Private offer on {{ offer.marketplace }}: {{ offer.name }}",
            Part::EmailText => concat!(
                "Hello{% if contact.name %} {{ contact.name }}{% endif %},\n\n",
                "A private offer is waiting for you on {{ offer.marketplace }}: {{ offer.name }}.\n\n",
                "{% if offer.url %}Review and accept it here: {{ offer.url }}",
                "{% else %}Sign in to the marketplace to review and accept it.{% endif %}\n"
            ),
            Part::EmailHtml => concat!(
                "<!DOCTYPE html><html><body>",
                "<p>Hello{% if contact.name %} {{ contact.name }}{% endif %},</p>",
                "<p>A private offer is waiting for you on {{ offer.marketplace }}: <strong>{{ offer.name }}</strong>.</p>",
                "{% if offer.url %}<p><a href=\"{{ offer.url }}\">Review and accept the offer</a></p>",
                "{% else %}<p>Sign in to the marketplace to review and accept it.</p>{% endif %}",
                "</body></html>"
            ),
            Part::Sms => concat!(
                "Private offer on {{ offer.marketplace }}: {{ offer.name | truncate(60) }}. ",
                "{% if offer.url %}Review: {{ offer.url }}{% else %}Sign in to review it.{% endif %}"
            ),
            Part::Slack => "*{{ offer.name }}*\n{{ event.recipientCount }} contact(s) notified",
            Part::Teams => "{{ offer.name }}",
        }
    }

    /// The organisation's own template for this part, if it has one.
    pub fn custom(self, settings: &NotificationSettings) -> Option<&str> {
        let t = settings.templates.as_ref()?;
        let s = match self {
            Part::EmailSubject => t.email.as_ref()?.subject.as_deref(),
            Part::EmailText => t.email.as_ref()?.text.as_deref(),
            Part::EmailHtml => t.email.as_ref()?.html.as_deref(),
            Part::Sms => t.sms.as_deref(),
            Part::Slack => t.slack.as_deref(),
            Part::Teams => t.microsoft_teams.as_deref(),
        }?;
        (!s.trim().is_empty()).then_some(s)
    }
}

/// Every variable a template may name, by object.
pub const VARIABLES: &[(&str, &[&str])] = &[
    (
        "offer",
        &["id", "name", "marketplace", "status", "expiry", "url"],
    ),
    ("contact", &["id", "name", "role", "company"]),
    ("seller", &["name"]),
    ("event", &["id", "recipientCount"]),
];
/// `customFields.NAME` (or `customFields["NAME"]`): any name; one that is
/// not set renders empty.
pub const CUSTOM_FIELDS: &str = "customFields";
/// The filters a template may use.
pub const FILTERS: &[&str] = &[
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "default",
    "truncate",
];
/// A render stops after this many engine steps (a second bound; the
/// language has no loops).
const FUEL: u64 = 100_000;
/// Variable caps, in characters.
const NAME_CHARS: usize = 300;
const FIELD_CHARS: usize = 200;
pub const CUSTOM_FIELD_CHARS: usize = 1_000;

/// What a template sees. Built from the stored offer, contact, settings and
/// event; every text is capped, and one-line fields are one line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Vars {
    pub offer: OfferVars,
    pub contact: ContactVars,
    pub seller: SellerVars,
    pub event: EventVars,
    #[serde(rename = "customFields")]
    pub custom_fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OfferVars {
    pub id: String,
    pub name: String,
    pub marketplace: String,
    pub status: String,
    pub expiry: String,
    /// Only a plain https URL; absent otherwise (`{% if offer.url %}`).
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ContactVars {
    pub id: String,
    pub name: String,
    pub role: String,
    pub company: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SellerVars {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventVars {
    pub id: String,
    pub recipient_count: usize,
}

fn line(s: Option<&str>, max: usize) -> String {
    truncate_chars(&single_line(s.unwrap_or_default()), max)
}

impl Vars {
    /// The event's variables; `contact` is empty until `with_contact`.
    pub fn new(
        offer: &Offer,
        settings: &NotificationSettings,
        custom_fields: Option<&serde_json::Map<String, serde_json::Value>>,
        event_id: &str,
        recipient_count: usize,
    ) -> Self {
        let seller = settings
            .seller_name
            .as_deref()
            .or(settings.sender_name.as_deref());
        let custom_fields = custom_fields
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), truncate_chars(&text, CUSTOM_FIELD_CHARS))
            })
            .collect();
        Vars {
            offer: OfferVars {
                id: line(Some(&offer.id), FIELD_CHARS),
                name: truncate_chars(&offer_name(offer), NAME_CHARS),
                marketplace: line(Some(marketplace(offer)), FIELD_CHARS),
                status: line(offer.status.as_deref(), FIELD_CHARS),
                expiry: line(offer.expire_time.as_deref(), FIELD_CHARS),
                url: offer_url(offer).map(str::to_owned),
            },
            contact: ContactVars::default(),
            seller: SellerVars {
                name: line(seller, FIELD_CHARS),
            },
            event: EventVars {
                id: event_id.to_owned(),
                recipient_count,
            },
            custom_fields,
        }
    }

    /// The same with one recipient's contact.
    pub fn with_contact(&self, contact: &Contact) -> Vars {
        let info = contact.info.as_ref();
        let mut v = self.clone();
        v.contact = ContactVars {
            id: line(Some(&contact.id), FIELD_CHARS),
            name: line(contact.name.as_deref(), FIELD_CHARS),
            role: line(info.and_then(|i| i.role.as_deref()), FIELD_CHARS),
            company: line(info.and_then(|i| i.company_name.as_deref()), FIELD_CHARS),
        };
        v
    }
}

/// A checked template, ready to render many times.
pub struct Renderer<'s> {
    env: Environment<'s>,
    part: Part,
    custom: bool,
}

/// The organisation's template for `part`, or the built-in one, checked.
/// `Err` is the reason every delivery it would render is FAILED.
pub fn renderer(part: Part, settings: &NotificationSettings) -> Result<Renderer<'_>, String> {
    match part.custom(settings) {
        Some(src) => compile(part, src, true),
        None => compile(part, part.default_source(), false),
    }
}

fn whitespace() -> WhitespaceConfig {
    WhitespaceConfig {
        keep_trailing_newline: true,
        lstrip_blocks: false,
        trim_blocks: false,
    }
}

/// "the organization's email.text template" (or "the built-in ...").
fn label(part: Part, custom: bool) -> String {
    let whose = if custom {
        "the organization's"
    } else {
        "the built-in"
    };
    format!("{whose} {} template", part.name())
}

/// Most tokens in one `{{ }}` or `{% %}` tag, most `{% if %}` nesting and
/// most `{% elif %}` in a template: the parser and the checks recurse per
/// level, so depth is bounded before anything is parsed.
const MAX_TAG_TOKENS: usize = 64;
const MAX_IF_DEPTH: usize = 16;
const MAX_ELIFS: usize = 64;

/// Bounds the depth of what `parse` would build, from the tokens alone.
fn check_depth(src: &str) -> Result<(), String> {
    use minijinja::machinery::{Token, tokenize};
    let (mut in_tag, mut tokens, mut depth, mut elifs) = (false, 0usize, 0usize, 0usize);
    let mut first = true;
    for t in tokenize(src, false, SyntaxConfig, whitespace()) {
        let (token, span) = t.map_err(|e| format!("does not parse: {}", error_text(&e)))?;
        match token {
            Token::VariableStart | Token::BlockStart => {
                (in_tag, tokens, first) = (true, 0, true);
                continue;
            }
            Token::VariableEnd | Token::BlockEnd => in_tag = false,
            _ if in_tag => {
                tokens += 1;
                if tokens > MAX_TAG_TOKENS {
                    return Err(format!(
                        "is not allowed: a tag of more than {MAX_TAG_TOKENS} parts at {}",
                        at(span)
                    ));
                }
                if first {
                    match token {
                        Token::Ident("if") => depth += 1,
                        Token::Ident("endif") => depth = depth.saturating_sub(1),
                        Token::Ident("elif") => elifs += 1,
                        _ => {}
                    }
                    if depth > MAX_IF_DEPTH || elifs > MAX_ELIFS {
                        return Err(format!(
                            "is not allowed: more than {MAX_IF_DEPTH} nested ifs or {MAX_ELIFS} elifs (at {})",
                            at(span)
                        ));
                    }
                }
                first = false;
            }
            _ => {}
        }
    }
    Ok(())
}

fn compile(part: Part, src: &str, custom: bool) -> Result<Renderer<'_>, String> {
    let fail = |why: String| format!("{} {why}", label(part, custom));
    if src.len() > part.max_template_bytes() {
        return Err(fail(format!(
            "is {} bytes; at most {} are allowed",
            src.len(),
            part.max_template_bytes()
        )));
    }
    check_depth(src).map_err(fail)?;
    let tree = parse(src, part.name(), SyntaxConfig, whitespace())
        .map_err(|e| fail(format!("does not parse: {}", error_text(&e))))?;
    check_stmt(&tree).map_err(|why| fail(format!("is not allowed: {why}")))?;

    let mut env = Environment::empty();
    env.set_keep_trailing_newline(true);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    match part.escape() {
        // Absent values (`offer.url` without a link) write nothing.
        Escape::None => {
            env.set_formatter(|out, _, v| out.write_str(&text_of(v)).map_err(Error::from))
        }
        Escape::Html => env.set_formatter(|out, _, v| {
            out.write_str(&escape_html(&text_of(v)))
                .map_err(Error::from)
        }),
        Escape::SlackMrkdwn => env.set_formatter(|out, _, v| {
            out.write_str(&super::slack::escape(&text_of(v)))
                .map_err(Error::from)
        }),
        Escape::TeamsMarkdown => env.set_formatter(|out, _, v| {
            out.write_str(&teams_escape(&text_of(v)))
                .map_err(Error::from)
        }),
    }
    add_filters(&mut env);
    env.add_template(part.name(), src)
        .map_err(|e| fail(format!("does not parse: {}", error_text(&e))))?;
    Ok(Renderer { env, part, custom })
}

impl Renderer<'_> {
    pub fn part(&self) -> Part {
        self.part
    }

    /// Whether this is the organisation's own template.
    pub fn is_custom(&self) -> bool {
        self.custom
    }

    /// "the organization's email.text template", for reasons.
    pub fn label(&self) -> String {
        label(self.part, self.custom)
    }

    /// The text for these variables; `Err` is why it could not be rendered.
    /// An organisation's HTML is also sanitised (`sanitize_html`).
    pub fn render(&self, vars: &Vars) -> Result<String, String> {
        let fail = |why: String| format!("{} {why}", self.label());
        let tmpl = self
            .env
            .get_template(self.part.name())
            .map_err(|e| fail(format!("does not parse: {}", error_text(&e))))?;
        let mut out = Capped {
            buf: Vec::with_capacity(512),
            cap: self.part.max_output_bytes(),
            over: false,
        };
        let result = tmpl.render_captured_to(vars, &mut out).map(drop);
        if out.over {
            return Err(fail(format!(
                "renders more than {} bytes",
                self.part.max_output_bytes()
            )));
        }
        result.map_err(|e| fail(format!("failed to render: {}", error_text(&e))))?;
        let text = String::from_utf8(out.buf).map_err(|_| fail("rendered invalid UTF-8".into()))?;
        Ok(if self.custom && self.part == Part::EmailHtml {
            sanitize_html(&text)
        } else {
            text
        })
    }
}

/// An organisation's email HTML, through an allow-list sanitiser (`ammonia`):
/// no scripts, event handlers, forms, frames or `javascript:`/`data:` links,
/// whatever the template or a variable wrote; links get
/// `rel="noopener noreferrer"`. Inline `style`, `class` and `align` stay
/// (emails are styled inline). Wrapped in a document of our own.
pub fn sanitize_html(html: &str) -> String {
    let clean = ammonia::Builder::default()
        .add_generic_attributes(["style", "class", "align"])
        .clean(html)
        .to_string();
    format!("<!DOCTYPE html><html><body>{clean}</body></html>")
}

/// What one event's messages may hold in memory, rendered, in all: the
/// deliveries past it are FAILED with why (a large template times a large
/// offer).
pub const EVENT_RENDER_BUDGET: usize = 24 * 1024 * 1024;

/// The engine's error without anything but its kind, detail and line.
fn error_text(e: &Error) -> String {
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    truncate_chars(&single_line(&s), 300)
}

/// A writer that refuses to grow past `cap`: the render stops there.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.over = true;
            return Err(io::Error::other("output cap reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn text_of(v: &Value) -> String {
    if v.is_undefined() || v.is_none() {
        String::new()
    } else {
        v.to_string()
    }
}

/// HTML text and attribute values: `&`, `<`, `>`, `"` and `'`. (Not `/`,
/// which the engine's own HTML escape also encodes: an `href` must stay a
/// plain URL for link tracking to see it.)
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Teams' card markdown: a variable cannot make a link or emphasis (a
/// backslash before `\ [ ] * _ ~` and the backquote).
fn teams_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '[' | ']' | '*' | '_' | '`' | '~') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn add_filters(env: &mut Environment<'_>) {
    env.add_filter("upper", |v: Value| text_of(&v).to_uppercase());
    env.add_filter("lower", |v: Value| text_of(&v).to_lowercase());
    env.add_filter("trim", |v: Value| text_of(&v).trim().to_owned());
    env.add_filter("capitalize", |v: Value| {
        let s = text_of(&v).to_lowercase();
        let mut c = s.chars();
        match c.next() {
            Some(f) => f.to_uppercase().chain(c).collect::<String>(),
            None => String::new(),
        }
    });
    env.add_filter("title", |v: Value| {
        let mut out = String::new();
        let mut start = true;
        for c in text_of(&v).chars() {
            if c.is_alphanumeric() {
                if start {
                    out.extend(c.to_uppercase());
                } else {
                    out.extend(c.to_lowercase());
                }
                start = false;
            } else {
                out.push(c);
                start = true;
            }
        }
        out
    });
    env.add_filter("default", |v: Value, fallback: Option<Value>| {
        let s = text_of(&v);
        if s.is_empty() {
            fallback.map(|f| text_of(&f)).unwrap_or_default()
        } else {
            s
        }
    });
    env.add_filter("truncate", |v: Value, n: Option<usize>| {
        truncate_chars(&text_of(&v), n.unwrap_or(255).clamp(1, 10_000))
    });
}

/// Where in the template, for the reason.
fn at(span: minijinja::machinery::Span) -> String {
    format!("line {}", span.start_line)
}

fn check_stmt(stmt: &Stmt<'_>) -> Result<(), String> {
    match stmt {
        Stmt::Template(t) => t.children.iter().try_for_each(check_stmt),
        Stmt::EmitRaw(_) => Ok(()),
        Stmt::EmitExpr(e) => check_expr(&e.expr, false),
        Stmt::IfCond(c) => {
            check_expr(&c.expr, true)?;
            c.true_body.iter().try_for_each(check_stmt)?;
            c.false_body.iter().try_for_each(check_stmt)
        }
        Stmt::ForLoop(s) => Err(tag("for", s.span())),
        Stmt::WithBlock(s) => Err(tag("with", s.span())),
        Stmt::Set(s) => Err(tag("set", s.span())),
        Stmt::SetBlock(s) => Err(tag("set", s.span())),
        Stmt::AutoEscape(s) => Err(tag("autoescape", s.span())),
        Stmt::FilterBlock(s) => Err(tag("filter", s.span())),
        Stmt::Do(s) => Err(tag("do", s.span())),
    }
}

fn tag(name: &str, span: minijinja::machinery::Span) -> String {
    format!(
        "`{{% {name} %}}` at {}; only text, {{{{ variables }}}} with filters, and {{% if %}} blocks are allowed",
        at(span)
    )
}

/// `cond`: inside `{% if %}`, where `not`, `and`, `or`, `==` and `!=` may
/// also be used.
fn check_expr(expr: &Expr<'_>, cond: bool) -> Result<(), String> {
    match expr {
        Expr::Const(_) => Ok(()),
        Expr::Var(_) | Expr::GetAttr(_) | Expr::GetItem(_) => check_path(expr),
        Expr::Filter(f) => {
            if !FILTERS.contains(&f.name) {
                return Err(format!(
                    "the filter `{}` at {}; the filters are: {}",
                    f.name,
                    at(f.span()),
                    FILTERS.join(", ")
                ));
            }
            match &f.expr {
                Some(e) => check_expr(e, cond)?,
                None => return Err(format!("a filter block at {}", at(f.span()))),
            }
            for a in &f.args {
                match a {
                    CallArg::Pos(Expr::Const(_)) => {}
                    _ => {
                        return Err(format!(
                            "the filter `{}` at {} takes constants only",
                            f.name,
                            at(f.span())
                        ));
                    }
                }
            }
            Ok(())
        }
        Expr::IfExpr(i) => {
            check_expr(&i.test_expr, true)?;
            check_expr(&i.true_expr, cond)?;
            i.false_expr
                .as_ref()
                .map_or(Ok(()), |e| check_expr(e, cond))
        }
        Expr::UnaryOp(u) if cond && matches!(u.op, ast::UnaryOpKind::Not) => {
            check_expr(&u.expr, true)
        }
        Expr::BinOp(b)
            if cond
                && matches!(
                    b.op,
                    ast::BinOpKind::ScAnd
                        | ast::BinOpKind::ScOr
                        | ast::BinOpKind::Eq
                        | ast::BinOpKind::Ne
                ) =>
        {
            check_expr(&b.left, true)?;
            check_expr(&b.right, true)
        }
        Expr::Compare(c)
            if cond
                && c.ops
                    .iter()
                    .all(|o| matches!(o.op, ast::CompareOpKind::Eq | ast::CompareOpKind::Ne)) =>
        {
            check_expr(&c.expr, true)?;
            c.ops.iter().try_for_each(|o| check_expr(&o.expr, true))
        }
        other => Err(format!(
            "a {} at {}; only variables, constants and filters are allowed{}",
            other.description(),
            at(other.span()),
            if cond {
                " (and not, and, or, ==, != in an if)"
            } else {
                ""
            }
        )),
    }
}

/// `object.field` from `VARIABLES`, or `customFields.NAME`.
fn check_path(expr: &Expr<'_>) -> Result<(), String> {
    let unknown = |what: String, span| {
        let known: Vec<String> = VARIABLES
            .iter()
            .flat_map(|(o, fs)| fs.iter().map(move |f| format!("{o}.{f}")))
            .chain(std::iter::once(format!("{CUSTOM_FIELDS}.NAME")))
            .collect();
        format!(
            "the variable `{what}` at {}; the variables are: {}",
            at(span),
            known.join(", ")
        )
    };
    match expr {
        Expr::Var(v) => Err(unknown(v.id.to_owned(), v.span())),
        Expr::GetAttr(g) => match &g.expr {
            Expr::Var(v) if v.id == CUSTOM_FIELDS => Ok(()),
            Expr::Var(v) => {
                let ok = VARIABLES
                    .iter()
                    .any(|(o, fs)| *o == v.id && fs.contains(&g.name));
                if ok {
                    Ok(())
                } else {
                    Err(unknown(format!("{}.{}", v.id, g.name), g.span()))
                }
            }
            _ => Err(unknown(format!("….{}", g.name), g.span())),
        },
        Expr::GetItem(g) => match (&g.expr, &g.subscript_expr) {
            (Expr::Var(v), Expr::Const(k))
                if v.id == CUSTOM_FIELDS && k.value.as_str().is_some() =>
            {
                Ok(())
            }
            _ => Err(format!(
                "an index at {}; only customFields[\"NAME\"] is allowed",
                at(g.span())
            )),
        },
        _ => Err(unknown("?".into(), expr.span())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::offer_text::tests::offer;

    fn vars() -> Vars {
        let mut v = Vars::new(
            &offer("Deal <b>", Some("https://aws.amazon.com/marketplace/o/1")),
            &NotificationSettings::default(),
            None,
            "e1",
            3,
        );
        v.contact.name = "Ann".into();
        v
    }

    fn render(part: Part, src: &str) -> Result<String, String> {
        compile(part, src, true)?.render(&vars())
    }

    #[test]
    fn every_default_is_allowed_and_renders() {
        for part in [
            Part::EmailSubject,
            Part::EmailText,
            Part::EmailHtml,
            Part::Sms,
            Part::Slack,
            Part::Teams,
        ] {
            let r = compile(part, part.default_source(), false).unwrap();
            assert!(!r.render(&vars()).unwrap().is_empty(), "{part:?}");
        }
    }

    #[test]
    fn variables_filters_and_ifs_render() {
        assert_eq!(
            render(
                Part::EmailText,
                "{{ contact.name | upper }}: {% if offer.url %}{{ offer.url }}{% else %}-{% endif %} {{ customFields.x | default('none') }} {{ event.recipientCount }}"
            )
            .unwrap(),
            "ANN: https://aws.amazon.com/marketplace/o/1 none 3"
        );
    }

    #[test]
    fn html_variables_are_escaped_and_slack_ones_too() {
        let html = render(Part::EmailHtml, "<b>{{ offer.name }}</b>").unwrap();
        assert_eq!(
            html,
            "<!DOCTYPE html><html><body><b>Deal &lt;b&gt;</b></body></html>"
        );
        let slack = render(Part::Slack, "*{{ offer.name }}*").unwrap();
        assert_eq!(slack, "*Deal &lt;b&gt;*");
        let teams = render(Part::Teams, "{{ customFields.x | default('[a](b)') }}").unwrap();
        assert_eq!(teams, "\\[a\\](b)");
    }

    #[test]
    fn refused_constructs_say_what_and_where() {
        for (src, says) in [
            (
                "{% for i in range(10) %}x{% endfor %}",
                "`{% for %}` at line 1",
            ),
            ("{% set a = 'x' %}", "`{% set %}`"),
            ("{{ 'x' * 100000000 }}", "expression at line 1"),
            ("{{ offer.name ~ offer.name }}", "expression"),
            ("{{ range(10) }}", "a call at line 1"),
            ("{{ lipsum }}", "the variable `lipsum`"),
            ("{{ offer.secret }}", "the variable `offer.secret`"),
            ("{{ offer }}", "the variable `offer`"),
            ("{{ offer.name | safe }}", "the filter `safe`"),
            ("{{ offer.name.__class__ }}", "the variable"),
            ("{% include 'x' %}", "does not parse"),
            ("{% macro m() %}{% endmacro %}", "does not parse"),
            ("{{ offer.name", "does not parse"),
        ] {
            let e = render(Part::EmailText, src).unwrap_err();
            assert!(e.contains(says), "{src}: {e}");
            assert!(
                e.starts_with("the organization's email.text template"),
                "{e}"
            );
        }
    }

    #[test]
    fn deep_templates_are_refused_before_any_recursion_on_a_small_stack() {
        let deep = [
            format!("{{% if {}1 %}}x{{% endif %}}", "not ".repeat(20_000)),
            format!("{{{{ 1{} }}}}", "|trim".repeat(10_000)),
            format!("{{{{ {}1 }}}}", "(".repeat(20_000)),
            format!("{{% if 1 %}}{}{{% endif %}}", "{% elif 1 %}".repeat(5_000)),
            format!(
                "{}{}",
                "{% if 1 %}".repeat(5_000),
                "{% endif %}".repeat(5_000)
            ),
            format!("{{{{ 1{} }}}}", " or 1".repeat(10_000)),
        ];
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for src in &deep {
                    let part = if src.len() > Part::EmailHtml.max_template_bytes() {
                        // Cut to the largest template: still far too deep.
                        &src[..Part::EmailHtml.max_template_bytes()]
                    } else {
                        src
                    };
                    assert!(compile(Part::EmailHtml, part, true).is_err());
                }
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn an_orgs_html_is_sanitised_and_text_parts_write_nothing_for_absent_values() {
        let mut v = vars();
        v.offer.url = None;
        let html = compile(
            Part::EmailHtml,
            "<a href=\"javascript:x\" onclick=\"y\">a</a><script>z</script>",
            true,
        )
        .unwrap()
        .render(&v)
        .unwrap();
        assert_eq!(
            html,
            "<!DOCTYPE html><html><body><a rel=\"noopener noreferrer\">a</a></body></html>"
        );
        let text = compile(Part::EmailText, "[{{ offer.url }}]", true)
            .unwrap()
            .render(&v)
            .unwrap();
        assert_eq!(text, "[]");
    }

    #[test]
    fn size_and_output_are_bounded() {
        let big = "x".repeat(Part::Sms.max_template_bytes() + 1);
        assert!(
            render(Part::Sms, &big)
                .unwrap_err()
                .contains("bytes; at most")
        );
        let mut v = vars();
        v.offer.name = "n".repeat(300);
        let many = "{{ offer.name }}".repeat(6);
        let e = compile(Part::Sms, &many, true)
            .unwrap()
            .render(&v)
            .unwrap_err();
        assert!(e.contains("renders more than 1600 bytes"), "{e}");
    }
}
