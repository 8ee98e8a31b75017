/// The Prometheus text format (version 0.0.4), as far as Baton needs it: an
/// agent serves its own series and those of the export servers it started
/// as one page, and the format wants each metric family once, its samples
/// together under its `# TYPE` line.
public enum MetricsExposition {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Joins pages: each family's `# HELP`/`# TYPE` lines once, then the
    /// samples of every page, in the order families first appear.
    public static func merge(_ pages: [String]) -> String {
        var order: [String] = []
        var heads: [String: [String]] = [:]
        var samples: [String: [String]] = [:]
        for page in pages {
            var family = ""
            for line in page.split(separator: "\n", omittingEmptySubsequences: true) {
                if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
                    family = String(line.dropFirst(7).prefix { $0 != " " })
                    if heads[family] == nil {
                        order.append(family)
                        heads[family] = []
                    }
                    if !heads[family]!.contains(String(line)) { heads[family]!.append(String(line)) }
                    continue
                }
                if line.hasPrefix("#") { continue }
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                // A sample belongs to the family above it (a histogram's _bucket, _sum and _count to their family).
                let owner = Self.belongs(name, to: family) ? family : name
                if heads[owner] == nil {
                    order.append(owner)
                    heads[owner] = []
                }
                samples[owner, default: []].append(String(line))
            }
        }
        var text = ""
        for family in order {
            for line in heads[family]! { text += line + "\n" }
            for line in samples[family] ?? [] { text += line + "\n" }
        }
        return text
    }

    private static func belongs(_ sample: String, to family: String) -> Bool {
        guard !family.isEmpty, sample.hasPrefix(family) else { return false }
        let suffix = sample.dropFirst(family.count)
        return suffix.isEmpty || ["_bucket", "_sum", "_count", "_total", "_created"].contains(String(suffix))
    }
}
