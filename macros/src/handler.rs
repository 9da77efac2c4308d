//! `#[derive(Handler)]`: parsing of `#[handler(...)]` and the `impl steadfast::Handler`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{DeriveInput, Ident, LitStr, Type};

use crate::message::attr_error;

/// The contents of the `#[handler(...)]` attributes.
#[derive(Default)]
pub(crate) struct HandlerArgs {
    pub(crate) message: Option<Type>,
    pub(crate) group: Option<LitStr>,
    /// `batch`: the type's inherent method is `handle_batch`, taking a batch of records.
    pub(crate) batch: bool,
}

impl HandlerArgs {
    /// Parses every `#[handler(...)]` attribute of the input; `None` when there is none.
    pub(crate) fn from_attrs(attrs: &[syn::Attribute]) -> syn::Result<Option<Self>> {
        let mut args = HandlerArgs::default();
        let mut seen = false;
        for attr in attrs.iter().filter(|a| a.path().is_ident("handler")) {
            seen = true;
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("message") {
                    let value = meta.value()?;
                    if value.peek(LitStr) {
                        let lit: LitStr = value.parse()?;
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "write the message type without quotes: `message = {}`",
                                lit.value()
                            ),
                        ));
                    }
                    let ty: Type = value.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "expected the message type: `message = OrderUpdated`",
                        )
                    })?;
                    if args.message.replace(ty).is_some() {
                        return Err(meta.error("duplicate `message`"));
                    }
                    Ok(())
                } else if meta.path.is_ident("group") {
                    let lit: LitStr = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "expected the consumer group as a string: `group = \"billing\"`",
                        )
                    })?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "the consumer group is empty: name the group, e.g. `group = \"billing\"`",
                        ));
                    }
                    if args.group.replace(lit).is_some() {
                        return Err(meta.error("duplicate `group`"));
                    }
                    Ok(())
                } else if meta.path.is_ident("batch") {
                    if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                        return Err(meta.error("`batch` takes no value: write `batch`"));
                    }
                    if std::mem::replace(&mut args.batch, true) {
                        return Err(meta.error("duplicate `batch`"));
                    }
                    Ok(())
                } else {
                    let path = &meta.path;
                    Err(meta.error(format!(
                        "unknown `handler` attribute key `{}`: expected `message`, `group` or `batch`",
                        quote!(#path).to_string().replace(' ', "")
                    )))
                }
            })?;
        }
        Ok(seen.then_some(args))
    }
}

/// Expands `#[derive(Handler)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let name: &Ident = &input.ident;
    let Some(args) = HandlerArgs::from_attrs(&input.attrs)? else {
        return Err(syn::Error::new(
            name.span(),
            "missing `#[handler(message = Type, group = \"...\")]` attribute for `#[derive(Handler)]`",
        ));
    };
    let Some(message) = args.message else {
        return Err(attr_error(
            input,
            "handler",
            format!("missing `message` in `#[handler(...)]`: add `message = Type`, the message type `{name}` handles"),
        ));
    };
    let Some(group) = args.group else {
        return Err(attr_error(
            input,
            "handler",
            format!("missing `group` in `#[handler(...)]`: add `group = \"...\"`, the consumer group `{name}` joins"),
        ));
    };

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    if args.batch {
        return Ok(expand_batch(input, &message, &group));
    }
    // Spanned at the struct's name: without an inherent `handle` the error points there. The
    // trait's method is `handle_message`, so `handle` never resolves to the trait itself.
    let call = quote_spanned! {name.span()=>
        <#name #ty_generics>::handle(self, message, cx)
    };
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::steadfast::Handler for #name #ty_generics #where_clause {
            type Message = #message;
            const GROUP: &'static str = #group;
            fn handle_message(
                &self,
                message: #message,
                cx: &::steadfast::Context,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::steadfast::HandlerError>,
            > + ::core::marker::Send {
                #call
            }
        }
    })
}

/// `#[handler(..., batch)]`: `BatchHandler` forwarding to the inherent `handle_batch`, and
/// `Handler` running single messages as batches of one and handing the runtime the batch path.
fn expand_batch(input: &DeriveInput, message: &Type, group: &LitStr) -> TokenStream {
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // The trait's method is `handle_message_batch`, so `handle_batch` never resolves to it.
    let call = quote_spanned! {name.span()=>
        <#name #ty_generics>::handle_batch(self, batch, cx)
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics ::steadfast::handler::BatchHandler for #name #ty_generics #where_clause {
            type Message = #message;
            const GROUP: &'static str = #group;
            fn handle_message_batch(
                &self,
                batch: ::steadfast::handler::Batch<#message>,
                cx: &::steadfast::handler::BatchContext,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::steadfast::HandlerError>,
            > + ::core::marker::Send {
                #call
            }
        }
        #[automatically_derived]
        impl #impl_generics ::steadfast::Handler for #name #ty_generics #where_clause {
            type Message = #message;
            const GROUP: &'static str = #group;
            fn handle_message(
                &self,
                message: #message,
                cx: &::steadfast::Context,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::steadfast::HandlerError>,
            > + ::core::marker::Send {
                ::steadfast::handler::handle_one(self, message, cx)
            }
            fn batch_runner(
                handler: ::std::sync::Arc<Self>,
            ) -> ::core::option::Option<::steadfast::handler::BatchRunner<#message>> {
                ::core::option::Option::Some(::steadfast::handler::BatchRunner::of(handler))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(attr: syn::Attribute) -> String {
        match HandlerArgs::from_attrs(&[attr]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn parses_message_and_group() {
        let a = HandlerArgs::from_attrs(&[
            syn::parse_quote!(#[handler(message = crate::OrderUpdated, group = "billing")]),
        ])
        .unwrap()
        .unwrap();
        let ty = a.message.unwrap();
        assert_eq!(quote!(#ty).to_string(), "crate :: OrderUpdated");
        assert_eq!(a.group.unwrap().value(), "billing");
    }

    #[test]
    fn rejects_bad_keys_and_values() {
        assert!(err(syn::parse_quote!(#[handler(message = M, topic = "t")]))
            .contains("unknown `handler` attribute key `topic`"));
        assert!(err(syn::parse_quote!(#[handler(group = "")])).contains("group is empty"));
        assert!(err(syn::parse_quote!(#[handler(group = "  ")])).contains("group is empty"));
        assert!(err(syn::parse_quote!(#[handler(group = billing)])).contains("as a string"));
        assert!(err(syn::parse_quote!(#[handler(message = "M")])).contains("without quotes"));
        assert!(err(syn::parse_quote!(#[handler(group = "a", group = "b")]))
            .contains("duplicate `group`"));
    }

    #[test]
    fn requires_attribute_message_and_group() {
        let expand_err = |input: DeriveInput| expand(&input).unwrap_err().to_string();
        assert!(expand_err(syn::parse_quote!(
            struct H;
        ))
        .contains("missing `#[handler("));
        assert!(expand_err(syn::parse_quote!(
            #[handler(group = "g")]
            struct H;
        ))
        .contains("missing `message`"));
        assert!(expand_err(syn::parse_quote!(
            #[handler(message = M)]
            struct H;
        ))
        .contains("missing `group`"));
    }

    #[test]
    fn batch_forwards_to_inherent_handle_batch() {
        let input: DeriveInput = syn::parse_quote! {
            #[handler(message = Txn, group = "ledger", batch)]
            struct Ledger;
        };
        let out = expand(&input).unwrap().to_string();
        assert!(out.contains("impl :: steadfast :: handler :: BatchHandler for Ledger"));
        assert!(out.contains("< Ledger > :: handle_batch (self , batch , cx)"));
        assert!(out.contains("BatchRunner :: of (handler)"));
        assert!(err(syn::parse_quote!(#[handler(batch, batch)])).contains("duplicate `batch`"));
        assert!(err(syn::parse_quote!(#[handler(batch = true)])).contains("takes no value"));
    }

    #[test]
    fn forwards_to_inherent_handle() {
        let input: DeriveInput = syn::parse_quote! {
            #[handler(message = OrderUpdated, group = "billing")]
            struct Billing;
        };
        let out = expand(&input).unwrap().to_string();
        assert!(out.contains("impl :: steadfast :: Handler for Billing"));
        assert!(out.contains("type Message = OrderUpdated"));
        assert!(out.contains("const GROUP : & 'static str = \"billing\""));
        assert!(out.contains("< Billing > :: handle (self , message , cx)"));
    }
}
