//! Prometheus text exposition: just enough to read counters and histograms.

use super::*;

pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

pub(crate) fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, mut rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            while let Some(&(start, c)) = chars.peek() {
                // key
                if c == '}' {
                    end = Some(start + 1);
                    break;
                }
                if c == ',' || c == ' ' {
                    chars.next();
                    continue;
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                // value, quoted, with \" \\ \n escapes
                if chars.next().map(|(_, c)| c) != Some('"') {
                    break;
                }
                let mut value = String::new();
                let mut escaped = false;
                for (_, c) in chars.by_ref() {
                    match (escaped, c) {
                        (true, 'n') => {
                            value.push('\n');
                            escaped = false;
                        }
                        (true, c) => {
                            value.push(c);
                            escaped = false;
                        }
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        (false, c) => value.push(c),
                    }
                }
                labels.push((key.trim().to_owned(), value));
            }
            let Some(end) = end else { continue };
            rest = &inner[end..];
        }
        let Some(value) = rest.split_whitespace().next().and_then(parse_number) else {
            continue;
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

pub(crate) fn parse_number(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

pub(crate) fn matches(sample: &Sample, name: &str, filter: &[(&str, &str)]) -> bool {
    sample.name == name
        && filter
            .iter()
            .all(|(k, v)| sample.labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// The sum of the series of `name` whose labels include `filter`.
pub(crate) fn counter(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| matches(s, name, filter))
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// The values of label `label` among the series of `name`.
pub(crate) fn label_values(samples: &[Sample], name: &str, label: &str) -> Vec<String> {
    let mut values: Vec<String> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| {
            s.labels
                .iter()
                .find(|(k, _)| k == label)
                .map(|(_, v)| v.clone())
        })
        .collect();
    values.sort();
    values.dedup();
    values
}

/// A histogram: cumulative counts by upper bound, summed over the series matching `filter`.
pub(crate) struct Histogram(pub(crate) Vec<(f64, f64)>);

impl Histogram {
    pub(crate) fn of(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> Histogram {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let bucket = format!("{name}_bucket");
        for s in samples.iter().filter(|s| matches(s, &bucket, filter)) {
            let Some(le) = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| parse_number(v))
            else {
                continue;
            };
            // Order by the bound (all bounds are non-negative, so the bits order as the values).
            by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
        Histogram(by_le.into_values().collect())
    }

    pub(crate) fn count(&self) -> f64 {
        self.0.last().map(|b| b.1).unwrap_or(0.0)
    }

    /// The q-quantile, interpolated linearly inside its bucket (Prometheus' histogram_quantile).
    /// In the +Inf bucket it is the largest finite bound, marked as a lower bound.
    pub(crate) fn quantile(&self, q: f64) -> Option<(f64, bool)> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut previous = (0.0, 0.0);
        for &(le, cumulative) in &self.0 {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some((previous.0, true));
                }
                let in_bucket = cumulative - previous.1;
                let fraction = if in_bucket > 0.0 {
                    (rank - previous.1) / in_bucket
                } else {
                    1.0
                };
                return Some((previous.0 + (le - previous.0) * fraction, false));
            }
            previous = (le, cumulative);
        }
        Some((previous.0, true))
    }

    /// "p50 1.2 ms  p99 4.5 ms  (n 10000)".
    pub(crate) fn summary(&self) -> String {
        let show = |q: f64| match self.quantile(q) {
            Some((v, true)) => format!(">{}", seconds(v)),
            Some((v, false)) => seconds(v),
            None => "-".into(),
        };
        format!(
            "p50 {:>9}  p99 {:>9}  (n {})",
            show(0.50),
            show(0.99),
            self.count()
        )
    }
}

pub(crate) fn seconds(v: f64) -> String {
    if v < 0.001 {
        format!("{:.0} µs", v * 1e6)
    } else if v < 1.0 {
        format!("{:.2} ms", v * 1e3)
    } else {
        format!("{v:.2} s")
    }
}

pub(crate) async fn scrape(http: &reqwest::Client, url: &str) -> Vec<Sample> {
    match http.get(url).send().await {
        Ok(r) => parse_metrics(&r.text().await.unwrap_or_default()),
        Err(e) => {
            eprintln!("scrape {url}: {e}");
            Vec::new()
        }
    }
}
