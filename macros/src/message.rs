//! `#[derive(Message)]`: parsing of `#[message(...)]` and the `impl steadfast::Message`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type};

/// The longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// The codec named by `codec = ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodecKind {
    /// `codec = json` (the default): `steadfast::message::Json`.
    Json,
    /// `codec = raw`: `steadfast::message::RawBytes`.
    Raw,
    /// `codec = protobuf`: `steadfast::message::Protobuf`.
    Protobuf,
}

/// The contents of the `#[message(...)]` attributes, before the fields are looked up.
#[derive(Default)]
pub(crate) struct MessageArgs {
    pub(crate) topic: Option<LitStr>,
    pub(crate) key: Option<Ident>,
    pub(crate) version: Option<Ident>,
    pub(crate) id: Option<Ident>,
    /// The codec and the span of its name in the attribute.
    pub(crate) codec: Option<(CodecKind, Span)>,
}

const KEYS: &str = "`topic`, `key`, `version`, `id`, `codec`";

impl MessageArgs {
    /// Parses every `#[message(...)]` attribute of the input; `None` when there is none.
    pub(crate) fn from_attrs(attrs: &[syn::Attribute]) -> syn::Result<Option<Self>> {
        let mut args = MessageArgs::default();
        let mut seen = false;
        for attr in attrs.iter().filter(|a| a.path().is_ident("message")) {
            seen = true;
            attr.parse_nested_meta(|meta| {
                let name = meta
                    .path
                    .get_ident()
                    .map(Ident::to_string)
                    .unwrap_or_default();
                match name.as_str() {
                    "topic" => {
                        let lit: LitStr = meta.value()?.parse().map_err(|e| {
                            syn::Error::new(
                                e.span(),
                                "expected the topic name as a string: `topic = \"orders\"`",
                            )
                        })?;
                        check_topic(&lit)?;
                        set_once(&mut args.topic, lit, &meta.path)
                    }
                    "key" | "version" | "id" => {
                        let field = parse_field_name(&meta, &name)?;
                        let slot = match name.as_str() {
                            "key" => &mut args.key,
                            "version" => &mut args.version,
                            _ => &mut args.id,
                        };
                        set_once(slot, field, &meta.path)
                    }
                    "codec" => {
                        // A name, or the same name quoted (`codec = "protobuf"`).
                        let value = meta.value()?;
                        let (name, span) = if value.peek(LitStr) {
                            let text: LitStr = value.parse()?;
                            (text.value(), text.span())
                        } else {
                            let ident: Ident = value.parse().map_err(|e| {
                                syn::Error::new(
                                    e.span(),
                                    "expected `codec = json`, `codec = protobuf` or `codec = raw`",
                                )
                            })?;
                            (ident.to_string(), ident.span())
                        };
                        let kind = match name.as_str() {
                            "json" => CodecKind::Json,
                            "raw" => CodecKind::Raw,
                            "protobuf" => CodecKind::Protobuf,
                            other => {
                                return Err(syn::Error::new(
                                    span,
                                    format!(
                                        "unknown codec `{other}`: expected `json` (the default), `protobuf` or `raw`"
                                    ),
                                ))
                            }
                        };
                        set_once(&mut args.codec, (kind, span), &meta.path)
                    }
                    _ => Err(meta.error(format!(
                        "unknown `message` attribute key `{}`: expected one of {KEYS}",
                        path_text(&meta.path)
                    ))),
                }
            })?;
        }
        Ok(seen.then_some(args))
    }
}

/// `key = order_id`: a bare field name (a string literal gets a hint).
fn parse_field_name(meta: &syn::meta::ParseNestedMeta<'_>, name: &str) -> syn::Result<Ident> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "write the field name without quotes: `{name} = {}`",
                lit.value()
            ),
        ));
    }
    value.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected a field name: `{name} = field_name`"),
        )
    })
}

fn set_once<T>(slot: &mut Option<T>, value: T, path: &syn::Path) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new_spanned(
            path,
            format!("duplicate `{}`", path_text(path)),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn path_text(path: &syn::Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

/// Kafka's rules for topic names: 1 to 249 characters of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
pub(crate) fn check_topic(lit: &LitStr) -> syn::Result<()> {
    let topic = lit.value();
    let problem = if topic.is_empty() {
        Some("the topic name is empty".to_owned())
    } else if topic.len() > MAX_TOPIC_LEN {
        Some(format!(
            "the topic name is {} characters long; Kafka allows at most {MAX_TOPIC_LEN}",
            topic.len()
        ))
    } else if topic == "." || topic == ".." {
        Some(format!("`{topic}` is not a valid topic name"))
    } else {
        topic
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| {
                format!(
                    "the topic name contains {c:?}; Kafka topic names use only ASCII letters, digits, `.`, `_` and `-`"
                )
            })
    };
    match problem {
        Some(msg) => Err(syn::Error::new(lit.span(), msg)),
        None => Ok(()),
    }
}

/// Expands `#[derive(Message)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => &named.named,
            Fields::Unnamed(_) | Fields::Unit => {
                return Err(syn::Error::new(
                    name.span(),
                    "`#[derive(Message)]` needs a struct with named fields: the key, version and id are named in `#[message(...)]`",
                ))
            }
        },
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span,
                "`#[derive(Message)]` supports structs with named fields only, not enums",
            ))
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "`#[derive(Message)]` supports structs with named fields only, not unions",
            ))
        }
    };

    let Some(args) = MessageArgs::from_attrs(&input.attrs)? else {
        return Err(syn::Error::new(
            name.span(),
            "missing `#[message(topic = \"...\", key = field)]` attribute for `#[derive(Message)]`",
        ));
    };
    let Some(topic) = args.topic else {
        return Err(attr_error(
            input,
            "message",
            format!("missing `topic` in `#[message(...)]`: add `topic = \"...\"`, the topic `{name}` is consumed from"),
        ));
    };
    let Some(key) = args.key else {
        return Err(attr_error(
            input,
            "message",
            format!("missing `key` in `#[message(...)]`: add `key = field`, the field of `{name}` that orders its messages"),
        ));
    };

    // The field's own name re-spanned at its type: the whole `&self.field` expression then
    // points at the type when the type cannot serve.
    let find = |ident: &Ident| -> syn::Result<(Ident, &Type)> {
        fields
            .iter()
            .find(|f| f.ident.as_ref() == Some(ident))
            .map(|f| {
                let mut member = ident.clone();
                member.set_span(f.ty.span());
                (member, &f.ty)
            })
            .ok_or_else(|| syn::Error::new(ident.span(), format!("no field `{ident}` on `{name}`")))
    };

    // Every problem with a field name is reported, not only the first.
    let mut errors: Option<syn::Error> = None;
    let mut lookup = |ident: &Ident| match find(ident) {
        Ok(ty) => Some(ty),
        Err(e) => {
            match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            }
            None
        }
    };
    let key_ty = lookup(&key);
    let version_ty = args.version.as_ref().map(&mut lookup);
    let id_ty = args.id.as_ref().map(&mut lookup);
    if let Some(e) = errors {
        return Err(e);
    }
    let (key, key_ty) = key_ty.expect("looked up");

    let key_fn = {
        let span = key_ty.span();
        let call = quote_spanned! {span=>
            ::steadfast::__private::MessageKey::key_bytes(&self.#key)
        };
        quote! {
            fn key(&self) -> ::std::vec::Vec<u8> {
                #call
            }
        }
    };
    let version_fn = match version_ty {
        Some(Some((field, ty))) => {
            let span = ty.span();
            let call = quote_spanned! {span=>
                ::steadfast::__private::MessageVersion::as_version(&self.#field)
            };
            quote! {
                fn version(&self) -> ::core::option::Option<i64> {
                    ::core::option::Option::Some(#call)
                }
            }
        }
        _ => TokenStream::new(),
    };
    let id_fn = match id_ty {
        Some(Some((field, ty))) => {
            let span = ty.span();
            let call = quote_spanned! {span=>
                ::steadfast::__private::MessageId::as_id(&self.#field)
            };
            quote! {
                fn id(&self) -> ::core::option::Option<::std::string::String> {
                    ::core::option::Option::Some(#call)
                }
            }
        }
        _ => TokenStream::new(),
    };
    let codec = match args.codec {
        None | Some((CodecKind::Json, _)) => {
            let span = args.codec.map_or(name.span(), |(_, s)| s);
            quote_spanned!(span=> ::steadfast::__private::Json)
        }
        Some((CodecKind::Raw, span)) => quote_spanned!(span=> ::steadfast::__private::RawBytes),
        Some((CodecKind::Protobuf, span)) => {
            quote_spanned!(span=> ::steadfast::__private::Protobuf)
        }
    };

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::steadfast::Message for #name #ty_generics #where_clause {
            const TOPIC: &'static str = #topic;
            type Codec = #codec;
            #key_fn
            #version_fn
            #id_fn
        }
    })
}

/// An error spanning the whole first attribute named `name` (`#[message(...)]`), or the
/// type's name when there is none.
pub(crate) fn attr_error(input: &DeriveInput, name: &str, msg: String) -> syn::Error {
    match input.attrs.iter().find(|a| a.path().is_ident(name)) {
        Some(attr) => syn::Error::new_spanned(attr, msg),
        None => syn::Error::new(input.ident.span(), msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(attr: syn::Attribute) -> syn::Result<Option<MessageArgs>> {
        MessageArgs::from_attrs(&[attr])
    }

    #[test]
    fn parses_all_keys() {
        let a = args(syn::parse_quote!(#[message(topic = "orders", key = order_id, version = updated_at, id = event_id, codec = raw)]))
            .unwrap()
            .unwrap();
        assert_eq!(a.topic.unwrap().value(), "orders");
        assert_eq!(a.key.unwrap(), "order_id");
        assert_eq!(a.version.unwrap(), "updated_at");
        assert_eq!(a.id.unwrap(), "event_id");
        assert_eq!(a.codec.unwrap().0, CodecKind::Raw);
    }

    #[test]
    fn keys_may_be_split_across_attributes() {
        let attrs: Vec<syn::Attribute> = vec![
            syn::parse_quote!(#[message(topic = "orders")]),
            syn::parse_quote!(#[doc = "not ours"]),
            syn::parse_quote!(#[message(key = order_id)]),
        ];
        let a = MessageArgs::from_attrs(&attrs).unwrap().unwrap();
        assert_eq!(a.topic.unwrap().value(), "orders");
        assert_eq!(a.key.unwrap(), "order_id");
        assert!(a.version.is_none() && a.id.is_none() && a.codec.is_none());
    }

    #[test]
    fn no_attribute_is_none() {
        assert!(args(syn::parse_quote!(#[doc = "x"])).unwrap().is_none());
    }

    #[test]
    fn rejects_unknown_duplicate_and_malformed_keys() {
        let err = |attr| match args(attr) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected an error"),
        };
        assert!(
            err(syn::parse_quote!(#[message(topic = "t", partition = 3)]))
                .contains("unknown `message` attribute key `partition`")
        );
        assert!(err(syn::parse_quote!(#[message(key = a, key = b)])).contains("duplicate `key`"));
        assert!(err(syn::parse_quote!(#[message(key = "order_id")]))
            .contains("without quotes: `key = order_id`"));
        assert!(err(syn::parse_quote!(#[message(codec = avro)])).contains("unknown codec `avro`"));
        assert!(err(syn::parse_quote!(#[message(topic = orders)])).contains("as a string"));
    }

    #[test]
    fn checks_topic_names() {
        let check = |t: &str| check_topic(&LitStr::new(t, Span::call_site()));
        assert!(check("orders").is_ok());
        assert!(check("orders.v2_eu-west").is_ok());
        assert!(check("").is_err());
        assert!(check(".").is_err());
        assert!(check("..").is_err());
        assert!(check("orders v2").is_err());
        assert!(check("ordérs").is_err());
        assert!(check(&"a".repeat(249)).is_ok());
        assert!(check(&"a".repeat(250)).is_err());
    }

    #[test]
    fn missing_field_names_the_struct() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(topic = "orders", key = orderid, version = updatedat)]
            struct OrderUpdated { order_id: String, updated_at: i64 }
        };
        let err = expand(&input).unwrap_err();
        let msgs: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "no field `orderid` on `OrderUpdated`",
                "no field `updatedat` on `OrderUpdated`"
            ]
        );
    }

    #[test]
    fn rejects_non_structs() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(topic = "orders", key = x)]
            enum E { A }
        };
        assert!(expand(&input)
            .unwrap_err()
            .to_string()
            .contains("not enums"));
        let input: DeriveInput = syn::parse_quote! {
            #[message(topic = "orders", key = x)]
            struct T(String);
        };
        assert!(expand(&input)
            .unwrap_err()
            .to_string()
            .contains("named fields"));
    }

    #[test]
    fn expands_key_version_id() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(topic = "orders", key = order_id, version = updated_at, id = event_id)]
            struct OrderUpdated { event_id: String, order_id: String, updated_at: i64 }
        };
        let out = expand(&input).unwrap().to_string();
        assert!(out.contains("impl :: steadfast :: Message for OrderUpdated"));
        assert!(out.contains("const TOPIC : & 'static str = \"orders\""));
        assert!(out.contains("type Codec = :: steadfast :: __private :: Json"));
        assert!(out.contains("MessageKey :: key_bytes (& self . order_id)"));
        assert!(out.contains("MessageVersion :: as_version (& self . updated_at)"));
        assert!(out.contains("MessageId :: as_id (& self . event_id)"));
    }

    #[test]
    fn version_and_id_are_optional() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(topic = "raw", key = k, codec = raw)]
            struct Raw { k: Vec<u8> }
        };
        let out = expand(&input).unwrap().to_string();
        assert!(out.contains("RawBytes"));
        assert!(!out.contains("fn version"));
        assert!(!out.contains("fn id"));
    }
}
