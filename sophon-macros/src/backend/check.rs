//! Reads the handlers of the impl block into a small model, reporting every misuse.

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ImplItem, ImplItemFn, PathArguments, ReturnType, Type};

use crate::errors::Errors;

/// What the impl block's handlers say about the backend.
pub(super) struct Model {
    pub(super) input: Type,
    pub(super) output: Type,
    pub(super) query: Query,
    pub(super) read: Option<Handler>,
    pub(super) nop: Option<Handler>,
    pub(super) start: Option<Handler>,
    pub(super) timer: Option<Handler>,
    pub(super) idle: Option<Handler>,
}

/// How `query` answers.
pub(super) struct Query {
    pub(super) takes_ctx: bool,
    pub(super) returns: Returns,
    /// Where a type error about the output (say, a missing `Clone`) should point.
    pub(super) output_span: proc_macro2::Span,
}

/// A `query` handler's return type, read syntactically.
pub(super) enum Returns {
    /// `()`: nothing to send (with a context), or `()` to send (without one).
    Unit,
    /// `T`: send it.
    Value,
    /// `Option<T>`: send it if there is one.
    Option,
    /// `Result<(), E>`.
    ResultUnit,
    /// `Result<T, E>`.
    Result,
    /// `Result<Option<T>, E>`.
    ResultOption,
}

/// `read`, `nop`, `start`, `timer` or `idle`.
pub(super) struct Handler {
    pub(super) takes_ctx: bool,
    pub(super) fallible: bool,
}

/// The handlers' parameters after `&mut self`: (input, context).
struct Params<'a> {
    input: Option<&'a Type>,
    ctx: Option<&'a Type>,
}

// Every handler takes `&mut self`, is neither generic nor `async`, and takes the parameters its
// kind allows: `query(&mut self, input: In)`, `read(&mut self, input: In)`, `nop(&mut self)`,
// `start(&mut self)`, `timer(&mut self, timer: TimerId)`, `idle(&mut self)`, each optionally followed by
// `ctx: &mut Context<Out>`. (That `timer` takes a `TimerId` is left to rustc.)
fn check_signature<'a>(f: &'a ImplItemFn, takes_input: bool, errors: &mut Errors) -> Option<Params<'a>> {
    let sig = &f.sig;
    let name = &sig.ident;
    let mut ok = true;
    if let Some(asyncness) = &sig.asyncness {
        errors.spanned(
            asyncness,
            format!(
                "`{name}` cannot be `async`; each agent runs on its own thread, so a handler may block: remove `async`"
            ),
        );
        ok = false;
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            format!("`{name}` cannot be generic; a backend has one input and one output type: use concrete types, or make the impl block generic"),
        );
        ok = false;
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(syn::Receiver { kind: syn::ReceiverKind::Reference(_, _, Some(_)), .. })) => {}
        Some(FnArg::Receiver(r)) => {
            errors.spanned(r, format!("`{name}` must take `&mut self`: handlers may change the backend's state"));
            ok = false;
        }
        _ => {
            errors.spanned(
                &sig.ident,
                format!("`{name}` must take `&mut self` first: handlers are methods of the backend"),
            );
            return None;
        }
    }
    let rest: Vec<&syn::PatType> = inputs
        .filter_map(|arg| match arg {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let expected = if takes_input {
        format!(
            "`{name}` takes the input and, optionally, the context: `fn {name}(&mut self, input: In)` or `fn {name}(&mut self, input: In, ctx: &mut sophon::Context<Out>)`"
        )
    } else {
        format!(
            "`{name}` takes no input, and optionally the context: `fn {name}(&mut self)` or `fn {name}(&mut self, ctx: &mut sophon::Context<Out>)`"
        )
    };
    let (input, ctx) = match (takes_input, rest.as_slice()) {
        (true, [input]) => (Some(&*input.ty), None),
        (true, [input, ctx]) => (Some(&*input.ty), Some(&*ctx.ty)),
        (false, []) => (None, None),
        (false, [ctx]) if context_output(&ctx.ty).is_some() => (None, Some(&*ctx.ty)),
        (false, [input]) => {
            errors.spanned(input, expected);
            return None;
        }
        _ => {
            errors.spanned(&sig.inputs, expected);
            return None;
        }
    };
    // Messages cross threads, so a handler owns its input.
    if let Some(Type::Reference(reference)) = input {
        let owned = match &*reference.elem {
            Type::Path(p) if p.path.is_ident("str") => "`String`".to_string(),
            Type::Slice(slice) => {
                let elem = &slice.elem;
                format!("`Vec<{}>`", quote::quote!(#elem).to_string().replace(' ', ""))
            }
            elem => format!("`{}`", quote::quote!(#elem).to_string().replace(' ', "")),
        };
        errors.spanned(
            reference,
            format!("the input of `{name}` is a message that crosses threads, so the handler owns it: take {owned}, not a reference"),
        );
        ok = false;
    }
    if let Some(ctx) = ctx
        && context_output(ctx).is_none()
    {
        errors.spanned(
            ctx,
            format!("the last parameter of `{name}` is the agent's context; write `ctx: &mut sophon::Context<Out>`"),
        );
        ok = false;
    }
    ok.then_some(Params { input, ctx })
}

/// Whether `ty` is or holds an `impl Trait`.
fn contains_impl_trait(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Path(p) => p.path.segments.iter().any(|s| match &s.arguments {
            PathArguments::AngleBracketed(args) => args.args.iter().any(|a| match a {
                syn::GenericArgument::Type(t) => contains_impl_trait(t),
                _ => false,
            }),
            _ => false,
        }),
        Type::Tuple(t) => t.elems.iter().any(contains_impl_trait),
        Type::Paren(p) => contains_impl_trait(&p.elem),
        _ => false,
    }
}

/// `Out` in `&mut Context<Out>`.
fn context_output(ty: &Type) -> Option<&Type> {
    let Type::Reference(r) = ty else { return None };
    r.mutability?;
    let Type::Path(p) = &*r.elem else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Context" {
        return None;
    }
    single_type_arg(&last.arguments)
}

fn single_type_arg(args: &PathArguments) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = args else { return None };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    types.next()
}

/// `Some(T)` when `ty` is `Name<T, ..>`.
fn wrapped<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    single_type_arg(&last.arguments)
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(t) if t.elems.is_empty())
}

/// Reads a return type: its shape and the output type it sends.
fn returns(ret: &ReturnType) -> (Returns, Type) {
    let unit: Type = syn::parse_quote!(());
    let ReturnType::Type(_, ty) = ret else { return (Returns::Unit, unit) };
    if is_unit(ty) {
        return (Returns::Unit, unit);
    }
    if let Some(ok) = wrapped(ty, "Result") {
        if is_unit(ok) {
            return (Returns::ResultUnit, unit);
        }
        if let Some(inner) = wrapped(ok, "Option") {
            return (Returns::ResultOption, inner.clone());
        }
        return (Returns::Result, ok.clone());
    }
    if let Some(inner) = wrapped(ty, "Option") {
        return (Returns::Option, inner.clone());
    }
    (Returns::Value, (**ty).clone())
}

fn same_type(a: &Type, b: &Type) -> bool {
    quote::quote!(#a).to_string() == quote::quote!(#b).to_string()
}

// `read`, `nop`, `start` and `timer` answer nothing: they return `()` or `Result<(), E>`, e.g.
// `fn read(&mut self, note: String) -> Result<(), std::io::Error>`.
fn check_no_answer(f: &ImplItemFn, errors: &mut Errors) -> Option<bool> {
    match returns(&f.sig.output).0 {
        Returns::Unit => Some(false),
        Returns::ResultUnit => Some(true),
        _ => {
            let name = &f.sig.ident;
            errors.spanned(&f.sig.output, format!("`{name}` answers nothing: return `()` or `Result<(), E>`"));
            None
        }
    }
}

/// Checks an optional handler: `None` when there is none, `Some(None)` when it has errors
/// (already reported).
#[allow(clippy::option_option, reason = "the two levels mean absent and invalid")]
fn optional<'a>(
    f: Option<&'a ImplItemFn>,
    takes_input: bool,
    errors: &mut Errors,
) -> Option<Option<(Params<'a>, bool)>> {
    f.map(|f| {
        let params = check_signature(f, takes_input, errors);
        let fallible = check_no_answer(f, errors);
        Some((params?, fallible?))
    })
}

pub(super) fn check(item: &syn::ItemImpl, errors: &mut Errors) -> Option<Model> {
    if item.trait_.is_some() {
        return None;
    }
    let handler = |name: &str| {
        item.items.iter().find_map(|i| match i {
            ImplItem::Fn(f) if f.sig.ident == name => Some(f),
            _ => None,
        })
    };
    let query_fn = handler("query");

    // `None`: no such handler; `Some(None)`: a handler with errors (already reported).
    let read = optional(handler("read"), true, errors);
    let nop = optional(handler("nop"), false, errors);
    let start = optional(handler("start"), false, errors);
    let timer = optional(handler("timer"), true, errors);
    let idle = optional(handler("idle"), false, errors);

    // A backend must answer queries, e.g. `fn query(&mut self, input: String) -> String`.
    let Some(query_fn) = query_fn else {
        let methods = item.items.iter().filter_map(|i| match i {
            ImplItem::Fn(f) => Some(f),
            _ => None,
        });
        let misspelled = methods.clone().find(|f| {
            let n = f.sig.ident.to_string();
            n.eq_ignore_ascii_case("query") || crate::errors::closest(&n, ["query"]).is_some()
        });
        match misspelled {
            Some(f) => errors.spanned(
                &f.sig.ident,
                format!(
                    "a backend needs a `query` handler, and handlers are found by name: rename `{}` to `query`",
                    f.sig.ident
                ),
            ),
            None => errors.spanned(
                &item.self_ty,
                "a backend needs a `query` handler; add `fn query(&mut self, input: In) -> Out` to this impl block",
            ),
        }
        return None;
    };
    let params = check_signature(query_fn, true, errors)?;
    if let ReturnType::Type(_, ty) = &query_fn.sig.output
        && contains_impl_trait(ty)
    {
        errors.spanned(
            ty,
            "what `query` returns is the backend's output type, which the graph's edges name: write the type itself, not `impl Trait`",
        );
        return None;
    }
    let input = params.input.expect("query takes an input").clone();
    let (shape, returned) = returns(&query_fn.sig.output);
    let output = match params.ctx {
        Some(ctx) => {
            // With an explicit context, the handler sends through it: `fn query(&mut self,
            // input: In, ctx: &mut Context<Out>) -> Result<(), E>`.
            if !matches!(shape, Returns::Unit | Returns::ResultUnit) {
                errors.spanned(
                    &query_fn.sig.output,
                    "a `query` that takes the context sends through it; return `()` or `Result<(), E>`",
                );
                return None;
            }
            context_output(ctx).expect("checked with the signature").clone()
        }
        None => returned,
    };
    let output_span = match &query_fn.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => query_fn.sig.ident.span(),
    };

    // `read` takes the same input as `query`: a backend has one input type.
    // Absent handlers are fine (`Some(None)`); invalid ones end the check (`None`).
    fn valid<T>(h: Option<Option<T>>) -> Option<Option<T>> {
        h.map_or(Some(None), |h| h.map(Some))
    }
    let (Some(read), Some(nop), Some(start), Some(timer), Some(idle)) =
        (valid(read), valid(nop), valid(start), valid(timer), valid(idle))
    else {
        return None;
    };
    let mut ok = true;
    if let Some((p, _)) = &read {
        let read_input = p.input.expect("read takes an input");
        if !same_type(read_input, &input) {
            errors.spanned(
                read_input,
                format!(
                    "`read` takes `{}` but `query` takes `{}`; a backend has one input type, so both handlers take it",
                    quote::quote!(#read_input),
                    quote::quote!(#input)
                ),
            );
            ok = false;
        }
    }
    ok.then(|| Model {
        input,
        output,
        query: Query { takes_ctx: params.ctx.is_some(), returns: shape, output_span },
        read: read.map(|(p, fallible)| Handler { takes_ctx: p.ctx.is_some(), fallible }),
        nop: nop.map(|(p, fallible)| Handler { takes_ctx: p.ctx.is_some(), fallible }),
        start: start.map(|(p, fallible)| Handler { takes_ctx: p.ctx.is_some(), fallible }),
        timer: timer.map(|(p, fallible)| Handler { takes_ctx: p.ctx.is_some(), fallible }),
        idle: idle.map(|(p, fallible)| Handler { takes_ctx: p.ctx.is_some(), fallible }),
    })
}
