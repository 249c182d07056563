//! Syntax of `agent_system!`. Stops at the first error: input that does not parse has nothing to
//! check.
//!
//! ```text
//! system    := statement (';' statement)* ';'?
//! statement := entity | edge
//! entity    := option* IDENT (':' TYPE)? '=' EXPR
//! option    := '#' '[' IDENT ('(' TOKENS ')')? ']'
//! edge      := 'loop'? IDENT arrow targets
//! arrow     := '->' (query) | '~>' (read)
//! targets   := target | '[' target (',' target)* ','? ']'
//! target    := IDENT | 'output' '(' IDENT ')'
//! ```

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, Ident, Token, Type, bracketed, parenthesized};

mod kw {
    syn::custom_keyword!(output);
}

pub(super) struct SystemInput {
    pub(super) statements: Vec<Statement>,
}

pub(super) enum Statement {
    Entity(Box<Entity>),
    Edge(Edge),
}

pub(super) struct Entity {
    pub(super) options: Vec<Attribute>,
    pub(super) name: Ident,
    pub(super) ty: Option<Type>,
    pub(super) expr: Expr,
}

pub(super) struct Edge {
    pub(super) loop_token: Option<Token![loop]>,
    pub(super) from: Ident,
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
    Output { keyword: kw::output, name: Ident },
}

impl quote::ToTokens for Target {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Target::Entity(name) => name.to_tokens(tokens),
            Target::Output { keyword, name } => {
                keyword.to_tokens(tokens);
                name.to_tokens(tokens);
            }
        }
    }
}

impl Parse for SystemInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut statements = Vec::new();
        while !input.is_empty() {
            statements.push(input.parse()?);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![;]>()?;
        }
        Ok(SystemInput { statements })
    }
}

impl Parse for Statement {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(Token![#]) || (input.peek(Ident) && (input.peek2(Token![:]) || input.peek2(Token![=]))) {
            return input.parse().map(|e| Statement::Entity(Box::new(e)));
        }
        if input.peek(Token![loop]) || (input.peek(Ident) && (input.peek2(Token![->]) || input.peek2(Token![~]))) {
            return input.parse().map(Statement::Edge);
        }
        if input.peek(Ident) {
            let fork = input.fork();
            let name: Ident = fork.parse()?;
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
        let name = input.parse()?;
        let ty = if input.peek(Token![:]) {
            input.parse::<Token![:]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        input.parse::<Token![=]>()?;
        let expr = input.parse()?;
        Ok(Entity { options, name, ty, expr })
    }
}

impl Parse for Edge {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let loop_token = input.parse()?;
        let from = input.parse()?;
        let lookahead = input.lookahead1();
        let arrow = if lookahead.peek(Token![->]) {
            Arrow::Query(input.parse()?)
        } else if lookahead.peek(Token![~]) {
            Arrow::Read(input.parse()?, input.parse()?)
        } else {
            return Err(lookahead.error());
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
        Ok(Edge { loop_token, from, arrow, targets })
    }
}

impl Parse for Target {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(kw::output) && input.peek2(syn::token::Paren) {
            let keyword = input.parse()?;
            let content;
            parenthesized!(content in input);
            let name = content.parse()?;
            return Ok(Target::Output { keyword, name });
        }
        input.parse().map(Target::Entity)
    }
}
