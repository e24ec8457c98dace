//! Lists as RabbitMQ's API returns them: sorted (`sort`, `sort_reverse`), filtered by name
//! (`name`, `use_regex`), cut to `columns` (dotted paths reach into objects) and, when `page`
//! is given, paginated (`page`, `page_size`) in an object that says how many there are.

use std::collections::HashMap;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

/// The largest page RabbitMQ serves.
const MAX_PAGE_SIZE: usize = 500;

/// The query parameters of a list.
#[derive(Debug, Default)]
pub struct ListQuery {
    sort: Option<String>,
    sort_reverse: bool,
    columns: Option<Vec<String>>,
    page: Option<usize>,
    page_size: usize,
    name: Option<String>,
    use_regex: bool,
    default_sort: &'static str,
}

impl ListQuery {
    /// Reads the parameters.
    pub fn parse(query: &HashMap<String, String>) -> ApiResult<Self> {
        let number = |key: &str| -> ApiResult<Option<usize>> {
            query
                .get(key)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| ApiError::bad_request(format!("{key} must be a number")))
                })
                .transpose()
        };
        let page = number("page")?;
        let page_size = number("page_size")?.unwrap_or(100);
        if page == Some(0) {
            return Err(ApiError::bad_request("page must be 1 or more"));
        }
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(ApiError::bad_request(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        Ok(Self {
            sort: query.get("sort").filter(|s| !s.is_empty()).cloned(),
            sort_reverse: query.get("sort_reverse").is_some_and(|v| v == "true"),
            columns: query
                .get("columns")
                .filter(|c| !c.is_empty())
                .map(|c| c.split(',').map(|s| s.trim().to_owned()).collect()),
            page,
            page_size,
            name: query.get("name").filter(|n| !n.is_empty()).cloned(),
            use_regex: query.get("use_regex").is_some_and(|v| v == "true"),
            default_sort: "name",
        })
    }

    /// Sorts by `key` when the query names no sort (lists whose items have no name).
    pub fn default_sort(&mut self, key: &'static str) {
        self.default_sort = key;
    }

    /// The list `items` as the query asks for it.
    pub fn respond(&self, mut items: Vec<Value>) -> ApiResult<Response> {
        let total = items.len();
        if let Some(key) = &self.sort {
            items.sort_by(|a, b| compare(lookup(a, key), lookup(b, key)));
        } else {
            let key = self.default_sort;
            items.sort_by(|a, b| compare(lookup(a, key), lookup(b, key)));
        }
        if self.sort_reverse {
            items.reverse();
        }
        if let Some(filter) = &self.name {
            let matches = name_filter(filter, self.use_regex)?;
            items.retain(|item| {
                item.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(&matches)
            });
        }
        let filtered = items.len();
        let items = match self.page {
            None => items,
            Some(page) => items
                .into_iter()
                .skip((page - 1).saturating_mul(self.page_size))
                .take(self.page_size)
                .collect(),
        };
        let items: Vec<Value> = match &self.columns {
            None => items,
            Some(columns) => items.iter().map(|item| pick(item, columns)).collect(),
        };
        let Some(page) = self.page else {
            return Ok(Json(Value::Array(items)).into_response());
        };
        let page_count = filtered.div_ceil(self.page_size).max(1);
        if page > page_count {
            return Err(ApiError::bad_request(format!(
                "page out of range: there are {page_count} pages"
            )));
        }
        Ok(Json(json!({
            "filtered_count": filtered,
            "item_count": items.len(),
            "items": items,
            "page": page,
            "page_count": page_count,
            "page_size": self.page_size,
            "total_count": total,
        }))
        .into_response())
    }

    /// One object cut to the query's columns.
    pub fn one(&self, item: Value) -> Response {
        match &self.columns {
            None => Json(item).into_response(),
            Some(columns) => Json(pick(&item, columns)).into_response(),
        }
    }
}

/// Whether an item's name passes the `name` filter.
type NameFilter = Box<dyn Fn(&str) -> bool>;

fn name_filter(filter: &str, use_regex: bool) -> ApiResult<NameFilter> {
    if use_regex {
        let regex = regex::RegexBuilder::new(filter)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| ApiError::bad_request(format!("invalid name regex: {e}")))?;
        Ok(Box::new(move |name| regex.is_match(name)))
    } else {
        let needle = filter.to_lowercase();
        Ok(Box::new(move |name| name.to_lowercase().contains(&needle)))
    }
}

/// The value at a dotted path.
fn lookup<'a>(item: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(item, |value, key| value.get(key))
}

/// A total order on JSON values for sorting: missing and null first, then booleans,
/// numbers, strings, and arrays and objects (equal among themselves); each kind in its own
/// order. (A partial order would let `sort_by` panic.)
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    fn rank(value: Option<&Value>) -> u8 {
        match value {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_)) => 1,
            Some(Value::Number(_)) => 2,
            Some(Value::String(_)) => 3,
            Some(Value::Array(_) | Value::Object(_)) => 4,
        }
    }
    rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => {
            let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            a.total_cmp(&b)
        }
        (Some(Value::String(a)), Some(Value::String(b))) => a.cmp(b),
        (Some(Value::Bool(a)), Some(Value::Bool(b))) => a.cmp(b),
        _ => std::cmp::Ordering::Equal,
    })
}

/// `item` with only the `columns` (dotted paths keep their nesting).
fn pick(item: &Value, columns: &[String]) -> Value {
    let mut out = Map::new();
    for column in columns {
        let Some(value) = lookup(item, column) else {
            continue;
        };
        let mut keys: Vec<&str> = column.split('.').collect();
        let Some(last) = keys.pop() else {
            continue;
        };
        let mut target = &mut out;
        for key in keys {
            let entry = target
                .entry(key.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else {
                unreachable!("made an object just above")
            };
            target = next;
        }
        target.insert(last.to_owned(), value.clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ListQuery::parse(&map).expect("valid query")
    }

    #[test]
    fn columns_keep_dotted_paths_and_pages_count_what_the_filter_kept() {
        let item = json!({"name": "q", "messages": 3, "message_stats": {"publish": 5, "ack": 1}});
        let cut = pick(&item, &["name".into(), "message_stats.publish".into()]);
        assert_eq!(cut, json!({"name": "q", "message_stats": {"publish": 5}}));

        let items: Vec<Value> = (0..5).map(|i| json!({"name": format!("q{i}")})).collect();
        let q = query(&[("page", "2"), ("page_size", "2"), ("name", "q")]);
        let ListQuery { page, .. } = q;
        assert_eq!(page, Some(2));
        let q = query(&[("page", "2"), ("page_size", "2"), ("name", "q")]);
        assert!(q.respond(items.clone()).is_ok());
        let q = query(&[("page", "9"), ("page_size", "2")]);
        assert!(q.respond(items).is_err(), "a page past the end is refused");
        assert!(ListQuery::parse(&[("page_size".to_owned(), "0".to_owned())].into()).is_err());
    }
}
