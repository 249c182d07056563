//! Syntax of `agent_system!`. Stops at the first error: input that does not parse has nothing to
//! check.
//!
//! ```text
//! system    := inner* (header ';')? statement (';' statement)* ';'?
//! inner     := '#' '!' '[' IDENT ('(' TOKENS ')')? ']'   (the runtime: `#![pool]`, `#![pool(4)]`, `#![threads]`; the bus: `#![bus(EXPR)]`)
//! header    := attribute* VISIBILITY 'struct' IDENT ('(' param (',' param)* ','? ')')?
//! param     := IDENT ':' TYPE
//! statement := entity | remote | edge
//! entity    := attribute* IDENT ('[' EXPR ']')? (':' TYPE)? '=' EXPR   (with `[size]`, a group: EXPR is `|i| ...`)
//! remote    := attribute* 'remote' IDENT ':' TYPE '=>' TYPE   (an entity of another process, over the bus)
//! attribute := '#' '[' IDENT ('(' TOKENS ')')? ']' | '///' doc comment
//! edge      := attribute* 'loop'? IDENT ('.' IDENT)? arrow targets
//! arrow     := '->' (query) | '~>' (read)
//! targets   := target | '[' target (',' target)* ','? ']'
//! target    := IDENT | 'output' '(' IDENT (':' TYPE)? ')'
//! ```

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, Ident, Token, Type, Visibility, bracketed, parenthesized};

mod kw {
    syn::custom_keyword!(output);
    syn::custom_keyword!(remote);
}

pub(super) struct SystemInput {
    /// `#![pool(4)]`: options of the whole system, checked later.
    pub(super) inner: Vec<Attribute>,
    /// `pub struct Chat(..);`: the system is a named struct, declared where the macro is.
    pub(super) header: Option<Header>,
    pub(super) statements: Vec<Statement>,
}

/// The first line of a named system.
pub(super) struct Header {
    pub(super) attrs: Vec<Attribute>,
    pub(super) vis: Visibility,
    pub(super) name: Ident,
    /// What `spawn` takes, for the entities' expressions to use.
    pub(super) params: Vec<Param>,
}

pub(super) struct Param {
    pub(super) name: Ident,
    pub(super) ty: Type,
}

pub(super) enum Statement {
    Entity(Box<Entity>),
    Edge(Edge),
}

pub(super) struct Entity {
    pub(super) options: Vec<Attribute>,
    pub(super) name: Ident,
    /// `workers[n] = |i| ..`: a group of `n` entities, the expression a closure from each one's
    /// index to its backend.
    pub(super) size: Option<Expr>,
    pub(super) ty: Option<Type>,
    pub(super) expr: Expr,
    /// `remote model: String => String`: an entity of another process, imported over the bus.
    pub(super) remote: Option<Remote>,
}

/// What `remote name: In => Out` declares besides the name.
pub(super) struct Remote {
    pub(super) keyword: kw::remote,
    pub(super) input: Type,
    pub(super) output: Type,
}

pub(super) struct Edge {
    /// Doc comments and `#[cfg(..)]`, checked later.
    pub(super) attrs: Vec<Attribute>,
    pub(super) loop_token: Option<Token![loop]>,
    pub(super) from: Ident,
    /// `ping.done -> ..`: the output port the edge is attached to.
    pub(super) port: Option<Ident>,
    pub(super) arrow: Arrow,
    pub(super) targets: Vec<Target>,
}

pub(super) enum Arrow {
    Query(Token![->]),
    Read(Token![~], Token![>]),
}

impl quote::ToTokens for Arrow {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Arrow::Query(arrow) => arrow.to_tokens(tokens),
            Arrow::Read(tilde, gt) => {
                tilde.to_tokens(tokens);
                gt.to_tokens(tokens);
            }
        }
    }
}

pub(super) enum Target {
    Entity(Ident),
    Output { keyword: kw::output, name: Ident, ty: Option<Box<Type>> },
}

impl quote::ToTokens for Target {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Target::Entity(name) => name.to_tokens(tokens),
            Target::Output { keyword, name, .. } => {
                keyword.to_tokens(tokens);
                name.to_tokens(tokens);
            }
        }
    }
}

impl Parse for SystemInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let inner = input.call(Attribute::parse_inner)?;
        let header = if starts_header(input) {
            let header = input.parse()?;
            if !input.is_empty() {
                input.parse::<Token![;]>()?;
            }
            Some(header)
        } else {
            None
        };
        let mut statements = Vec::new();
        while !input.is_empty() {
            let statement = input.parse()?;
            end_of_statement(input, &statement)?;
            statements.push(statement);
        }
        Ok(SystemInput { inner, header, statements })
    }
}

/// The `;` after a statement (or the end of the input), with a hint for what people write
/// there instead.
fn end_of_statement(input: ParseStream<'_>, statement: &Statement) -> syn::Result<()> {
    if input.is_empty() {
        return Ok(());
    }
    if input.peek(Token![;]) {
        input.parse::<Token![;]>()?;
        return Ok(());
    }
    let message = match statement {
        Statement::Edge(edge) if input.peek(Token![->]) || input.peek(Token![~]) => {
            let last = edge.targets.last().map(|t| quote::quote!(#t).to_string()).unwrap_or_default();
            format!(
                "one edge per statement: end this one with `;` and start the next from `{last}`, e.g. `a -> b; {last} -> c;`"
            )
        }
        Statement::Edge(_) if input.peek(Token![,]) => "several targets go in brackets: `a -> [b, c];`".to_string(),
        Statement::Edge(_) if input.peek(Token![.]) => {
            "a target is an entity's name, not a port: ports belong to the sending side, `a.port -> b;`".to_string()
        }
        _ => "expected `;` to end the statement before this".to_string(),
    };
    Err(input.error(message))
}

/// Whether the input begins with `[attributes] [pub] struct`.
fn starts_header(input: ParseStream<'_>) -> bool {
    let fork = input.fork();
    if fork.call(Attribute::parse_outer).is_err() || fork.parse::<Visibility>().is_err() {
        return false;
    }
    fork.peek(Token![struct])
}

impl Parse for Header {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        input.parse::<Token![struct]>()?;
        let name: Ident = input.parse()?;
        if input.peek(Token![<]) {
            return Err(input.error(format!(
                "a named system takes no generic parameters: its fields are the entities' handles, typed by their backends; write `struct {name};`"
            )));
        }
        if input.peek(syn::token::Brace) {
            return Err(input.error(format!(
                "a named system's fields are its entities and outputs, declared after it; write `struct {name};`, or `struct {name}(param: Type, ..);` for what `{name}::spawn` takes"
            )));
        }
        let mut params = Vec::new();
        if input.peek(syn::token::Paren) {
            let content;
            parenthesized!(content in input);
            for param in Punctuated::<Param, Token![,]>::parse_terminated(&content)? {
                params.push(param);
            }
        }
        if !input.is_empty() && !input.peek(Token![;]) {
            return Err(input.error(format!("expected `;` after `struct {name}`")));
        }
        Ok(Header { attrs, vis, name, params })
    }
}

impl Parse for Param {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if !input.peek(Ident) || !input.peek2(Token![:]) {
            return Err(input.error(
                "expected a parameter of `spawn`, `name: Type`, as in `struct Chat(model: LocalLlm, prompt: String);`",
            ));
        }
        let name = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty = input.parse()?;
        Ok(Param { name, ty })
    }
}

/// Words people from other languages begin a line with, which have no place here.
const ITEM_WORDS: &[&str] = &["let", "fn", "const", "static", "use", "impl", "mod", "type", "enum", "trait"];

impl Parse for Statement {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        if input.peek(Token![pub]) || input.peek(Token![struct]) {
            return Err(input.error(
                "a named system's `struct` line comes first, before its entities and edges: `pub struct Chat;`",
            ));
        }
        if input.peek(Token![;]) {
            return Err(input.error("a stray `;`: remove it"));
        }
        if input.peek(Token![let]) {
            return Err(input.error("no `let` here: an entity is declared as `name = MyBackend::new();`"));
        }
        if let Some(word) = ITEM_WORDS.iter().find(|w| input.cursor().ident().is_some_and(|(i, _)| i == *w)) {
            return Err(input.error(format!(
                "`{word}` has no place in `agent_system!`, which holds entities (`a = A;`) and edges (`a -> b;`) only; put items outside it"
            )));
        }
        if input.peek(Token![loop]) {
            let mut edge: Edge = input.parse()?;
            edge.attrs = attrs;
            return Ok(Statement::Edge(edge));
        }
        // `remote model: ..`; an entity that is itself called `remote` is followed by `=`, `:`
        // or an arrow instead.
        if input.peek(kw::remote) && input.peek2(Ident) {
            let mut entity = parse_remote(input)?;
            entity.options = attrs;
            return Ok(Statement::Entity(Box::new(entity)));
        }
        if input.peek(Ident) && (input.peek2(Token![::]) || input.peek2(syn::token::Paren)) {
            return Err(input.error(
                "a statement starts with an entity's name: declare one as `name = MyBackend::new();`, with the expression after `=`",
            ));
        }
        if input.peek(Ident) {
            if input.peek2(Token![:])
                || input.peek2(Token![=]) && !input.peek2(Token![=>])
                || input.peek2(syn::token::Bracket)
            {
                let mut entity: Entity = input.parse()?;
                entity.options = attrs;
                return Ok(Statement::Entity(Box::new(entity)));
            }
            let fork = input.fork();
            let name: Ident = fork.parse()?;
            if fork.peek(Token![->])
                || fork.peek(Token![~])
                || fork.peek(Token![.])
                || fork.peek(Token![=>])
                || fork.peek(Token![<])
                || fork.peek(Token![-])
            {
                let mut edge: Edge = input.parse()?;
                edge.attrs = attrs;
                return Ok(Statement::Edge(edge));
            }
            return Err(fork.error(format!(
                "expected `=` or `:` to declare entity `{name}`, or `->` or `~>` for an edge from it; \
                 e.g. `{name} = MyBackend::new();` or `{name} -> other;`"
            )));
        }
        Err(input
            .error("expected an entity (`name = MyBackend::new()`) or an edge (`a -> b`, `a ~> b`, `loop a -> b`)"))
    }
}

impl Parse for Entity {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let options = input.call(Attribute::parse_outer)?;
        let name: Ident = input.parse()?;
        let size = if input.peek(syn::token::Bracket) {
            let content;
            let brackets = bracketed!(content in input);
            if content.is_empty() {
                return Err(syn::Error::new(
                    brackets.span.join(),
                    format!("a group needs its size: `{name}[n] = |i| MyBackend::new(i);`"),
                ));
            }
            let size: Expr = content.parse()?;
            if !content.is_empty() {
                return Err(content.error(format!("a group's size is one expression: `{name}[n]`")));
            }
            if input.peek(Token![->]) || input.peek(Token![~]) {
                return Err(input.error(format!(
                    "an edge starts at a whole group, which sends from every member: `{name} -> target;`"
                )));
            }
            Some(size)
        } else {
            None
        };
        let ty = if input.peek(Token![:]) {
            input.parse::<Token![:]>()?;
            if input.peek(Token![=]) {
                return Err(input.error(format!(
                    "`:=` is not Rust: write `{name} = MyBackend::new();`, or `{name}: MyBackend = ...;` to give the type"
                )));
            }
            if input.is_empty() || input.peek(Token![;]) {
                return Err(input.error(format!("expected the backend's type after `:`: `{name}: MyBackend = ...`")));
            }
            Some(input.parse()?)
        } else {
            None
        };
        if !input.peek(Token![=]) {
            return Err(input.error(format!(
                "expected `=` and the backend after the type: `{name}: MyBackend = MyBackend::new();`"
            )));
        }
        input.parse::<Token![=]>()?;
        if input.is_empty() || input.peek(Token![;]) {
            return Err(
                input.error(format!("expected the backend `{name}` runs after `=`: `{name} = MyBackend::new();`"))
            );
        }
        if input.peek(Token![#]) {
            return Err(input.error(format!(
                "entity options go before the entity's name, on its line: `#[bounded(16)] {name} = MyBackend::new();`"
            )));
        }
        let expr = input.parse()?;
        Ok(Entity { options, name, size, ty, expr, remote: None })
    }
}

/// `remote model: String => String`: the types are the entity's input and output, as the
/// process that exports it has them.
fn parse_remote(input: ParseStream<'_>) -> syn::Result<Entity> {
    let keyword: kw::remote = input.parse()?;
    let name: Ident = input.parse()?;
    let usage = format!("a remote entity names its input and output types: `remote {name}: String => String;`");
    if !input.peek(Token![:]) {
        return Err(input.error(usage));
    }
    input.parse::<Token![:]>()?;
    if input.is_empty() || input.peek(Token![;]) || input.peek(Token![=>]) {
        return Err(input.error(usage));
    }
    let in_ty: Type = input.parse()?;
    if !input.peek(Token![=>]) {
        return Err(input.error(format!(
            "expected `=>` and the output type after the input type: `remote {name}: {} => Out;`",
            quote::quote!(#in_ty).to_string().replace(' ', "")
        )));
    }
    input.parse::<Token![=>]>()?;
    if input.is_empty() || input.peek(Token![;]) {
        return Err(input.error(usage));
    }
    let out_ty: Type = input.parse()?;
    if input.peek(Token![=]) {
        return Err(input.error(format!(
            "a remote entity runs in another process, which gives its backend there: `#[export] {name} = MyBackend::new();`; here it is only `remote {name}: In => Out;`"
        )));
    }
    Ok(Entity {
        options: Vec::new(),
        name,
        size: None,
        ty: None,
        expr: Expr::Verbatim(TokenStream::new()),
        remote: Some(Remote { keyword, input: in_ty, output: out_ty }),
    })
}

impl Parse for Edge {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let loop_token = input.parse()?;
        let from: Ident = input.parse()?;
        let port = if input.peek(Token![.]) {
            input.parse::<Token![.]>()?;
            if !input.peek(Ident) {
                return Err(input.error(format!("expected the port's name after `.`: `{from}.done -> ...`")));
            }
            Some(input.parse()?)
        } else {
            None
        };
        let source = match &port {
            Some(port) => format!("{from}.{port}"),
            None => from.to_string(),
        };
        if input.peek(Token![.]) {
            return Err(input.error(format!("a port is named once, after its entity: `{source} -> ...`")));
        }
        let arrow = if input.peek(Token![->]) {
            Arrow::Query(input.parse()?)
        } else if input.peek(Token![~]) {
            let tilde = input.parse()?;
            if !input.peek(Token![>]) {
                return Err(input.error(format!("a read edge is written `~>`: `{source} ~> target`")));
            }
            Arrow::Read(tilde, input.parse()?)
        } else if input.peek(Token![=>]) {
            return Err(input.error(format!(
                "edges are written `->` (a query edge) or `~>` (a read edge), not `=>`: `{source} -> target`"
            )));
        } else if input.peek(Token![<]) && input.peek2(Token![-]) {
            let fork = input.fork();
            fork.parse::<Token![<]>()?;
            fork.parse::<Token![-]>()?;
            let sender = fork.parse::<Ident>().map_or_else(|_| "sender".to_string(), |i| i.to_string());
            return Err(input.error(format!(
                "edges point from the sender to the receiver with `->`: write `{sender} -> {source}` for an edge into `{source}`"
            )));
        } else if input.peek(Token![-]) {
            return Err(input.error(format!("an edge's arrow is `->`: `{source} -> target`")));
        } else if input.peek(Token![=]) || input.peek(Token![:]) {
            return Err(input.error(format!(
                "`{source}` names a port, and an entity is declared by its name alone: `{from} = MyBackend::new();`"
            )));
        } else {
            return Err(input.error(format!("expected `->` (a query edge) or `~>` (a read edge) after `{source}`")));
        };
        let targets = if input.peek(syn::token::Bracket) {
            let content;
            bracketed!(content in input);
            let list = Punctuated::<Target, Token![,]>::parse_terminated(&content)?;
            if list.is_empty() {
                return Err(content.error("expected at least one target in `[...]`"));
            }
            list.into_iter().collect()
        } else {
            vec![input.parse()?]
        };
        Ok(Edge { attrs, loop_token, from, port, arrow, targets })
    }
}

impl Parse for Target {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(kw::output) && input.peek2(syn::token::Paren) {
            let keyword = input.parse()?;
            let content;
            let parens = parenthesized!(content in input);
            if content.is_empty() {
                return Err(syn::Error::new(
                    parens.span.join(),
                    "an output needs a name, which becomes the system's field: `output(answers)`",
                ));
            }
            if content.peek(syn::Lit) {
                return Err(content.error("an output's name is an identifier, not a literal: `output(answers)`"));
            }
            let name: Ident = content.parse()?;
            let ty = if content.peek(Token![:]) {
                content.parse::<Token![:]>()?;
                Some(Box::new(content.parse()?))
            } else {
                None
            };
            if !content.is_empty() {
                return Err(content.error(format!(
                    "an output takes one name, and optionally its type: `output({name})` or `output({name}: T)`"
                )));
            }
            return Ok(Target::Output { keyword, name, ty });
        }
        if input.is_empty() || input.peek(Token![;]) {
            return Err(
                input.error("expected the edge's target: an entity's name, `output(name)`, or `[a, b]` for several")
            );
        }
        if input.peek(Token![loop]) {
            return Err(input.error("`loop` goes before the edge it marks: `loop a -> b;`"));
        }
        if input.peek(Ident) && input.peek2(syn::token::Bracket) {
            let name: Ident = input.fork().parse()?;
            return Err(input
                .error(format!("an edge reaches a whole group, every member of it: `-> {name};`, without an index")));
        }
        if !input.peek(Ident) || input.peek2(Token![::]) || input.peek2(syn::token::Paren) {
            return Err(input.error("an edge's target is an entity's name, `output(name)`, or `[a, b]` for several"));
        }
        input.parse().map(Target::Entity)
    }
}
