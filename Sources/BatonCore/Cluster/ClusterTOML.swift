/// Where something starts in the cluster file: 1-based line and column, the
/// column counted in Unicode scalars, so it matches what an editor shows for
/// the ASCII that a cluster file is made of.
struct TOMLPosition: Hashable, Sendable {
    var line: Int
    var column: Int
}

/// A value of the TOML subset the cluster file is written in, with where it starts.
struct TOMLValue: Hashable, Sendable {
    enum Kind: Hashable, Sendable {
        case string(String)
        case integer(Int)
        case boolean(Bool)
        /// Single-line, every element a string or every element an integer.
        case array([TOMLValue])
        /// `[name]`; its position is the header's.
        case table(TOMLTable)
        /// `[[name]]`, one table per header, in file order.
        case arrayOfTables([TOMLTable])
    }

    var kind: Kind
    var position: TOMLPosition

    /// How an error message names what was found where something else was expected.
    var kindName: String {
        switch kind {
        case .string: "a string"
        case .integer: "a number"
        case .boolean: "a boolean"
        case .array: "a list"
        case .table: "a [table]"
        case .arrayOfTables: "an [[array of tables]]"
        }
    }
}

/// One `key = value`, or a header at the top level.
struct TOMLEntry: Hashable, Sendable {
    var key: String
    var keyPosition: TOMLPosition
    var value: TOMLValue
}

/// A table's entries in file order, so that the first of several problems is
/// the one reported, the same on every run.
struct TOMLTable: Hashable, Sendable {
    /// The header's `[`; line 1, column 1 for the top level.
    var position: TOMLPosition
    private(set) var entries: [TOMLEntry] = []
    private var indexByKey: [String: Int] = [:]

    init(position: TOMLPosition) { self.position = position }

    subscript(key: String) -> TOMLEntry? { indexByKey[key].map { entries[$0] } }

    /// False, and nothing changes, when the key is already there.
    mutating func insert(_ entry: TOMLEntry) -> Bool {
        guard indexByKey[entry.key] == nil else { return false }
        indexByKey[entry.key] = entries.count
        entries.append(entry)
        return true
    }
}

/// A strict parser for the part of TOML 1.0 that the cluster file uses:
/// comments, `key = value` with bare keys, basic strings, decimal integers,
/// booleans, single-line lists of strings or of integers, `[table]` and
/// `[[array of tables]]` at the top level. Everything else TOML allows is
/// rejected by name rather than misread, so a file that parses here means the
/// same to any TOML reader, and an admin's mistake is reported where it is.
enum ClusterTOML {
    /// A cluster file is a few kilobytes; this bounds the work done on a wrong file.
    static let maxFileSizeBytes = 1 << 20

    static func parse(_ text: String) throws(ClusterConfigurationError) -> TOMLTable {
        let size = text.utf8.count
        guard size <= maxFileSizeBytes else {
            throw ClusterConfigurationError(
                "the file is \(size) bytes, over the limit of \(maxFileSizeBytes); a cluster file is a few kilobytes, check that the right file was given")
        }
        var parser = Parser()
        var lineNumber = 0
        // Split on LF only: a CR is allowed just before it (CRLF files), and rejected anywhere else by the line parser.
        for line in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var scalars = Array(line)
            if scalars.last == "\r" { scalars.removeLast() }
            // A byte order mark that some editors write is not part of the first key.
            if lineNumber == 1, scalars.first == "\u{FEFF}" { scalars.removeFirst() }
            try parser.parseLine(scalars, number: lineNumber)
        }
        return parser.finish()
    }

    /// The control characters TOML keeps out of strings; names and paths are held to the same.
    static func isControl(_ scalar: Unicode.Scalar) -> Bool { scalar.value < 0x20 || scalar.value == 0x7F }

    /// `U+0007`: how messages show a character that would not print.
    static func codePoint(_ scalar: Unicode.Scalar) -> String {
        let hex = String(scalar.value, radix: 16, uppercase: true)
        return "U+" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
    }

    /// Where the current header sends the keys that follow it.
    private enum Section {
        case root
        case table(String)
        case arrayOfTables(String)
    }

    private struct Parser {
        var root = TOMLTable(position: TOMLPosition(line: 1, column: 1))
        var section = Section.root
        /// Headers are kept apart from `root` until the end, so keys can be added to the open one in place.
        var tables: [String: TOMLTable] = [:]
        var arraysOfTables: [String: [TOMLTable]] = [:]
        var headerOrder: [(key: String, position: TOMLPosition)] = []

        // State of the line being parsed.
        var line: [Unicode.Scalar] = []
        var lineNumber = 0
        var index = 0

        mutating func parseLine(_ scalars: [Unicode.Scalar], number: Int) throws(ClusterConfigurationError) {
            line = scalars
            lineNumber = number
            index = 0
            skipWhitespace()
            guard let first = current, first != "#" else { return }
            if first == "\r" { throw error("a carriage return must be followed by a line feed (end lines with LF or CRLF)") }
            if first == "[" {
                try parseHeader()
            } else {
                try parseKeyValue()
            }
        }

        func finish() -> TOMLTable {
            var table = root
            for header in headerOrder {
                let value: TOMLValue.Kind
                if let single = tables[header.key] {
                    value = .table(single)
                } else {
                    value = .arrayOfTables(arraysOfTables[header.key] ?? [])
                }
                let inserted = table.insert(
                    TOMLEntry(key: header.key, keyPosition: header.position, value: TOMLValue(kind: value, position: header.position)))
                assert(inserted, "a header that redefines a key is rejected when it is read")
            }
            return table
        }

        // MARK: Lines

        private mutating func parseHeader() throws(ClusterConfigurationError) {
            let start = position
            index += 1
            let isArray = current == "["
            if isArray { index += 1 }
            let brackets = isArray ? "[[" : "["
            skipWhitespace()
            let key = try parseKey(expected: "expected a table name (letters, digits, '_' and '-') after '\(brackets)'")
            skipWhitespace()
            if isArray {
                guard current == "]", peek(1) == "]" else {
                    throw error("expected ']]' to close the [[\(key)]] header")
                }
                index += 2
            } else {
                guard current == "]" else { throw error("expected ']' to close the [\(key)] header") }
                index += 1
            }
            try expectEndOfLine(after: "the header")
            try openSection(key, isArray: isArray, at: start)
        }

        private mutating func openSection(_ key: String, isArray: Bool, at start: TOMLPosition) throws(ClusterConfigurationError) {
            let written = isArray ? "[[\(key)]]" : "[\(key)]"
            if let entry = root[key] {
                throw error("\(written) redefines the key '\(key)' set on line \(entry.keyPosition.line); write its contents either as a key or under the header, not both",
                            at: start)
            }
            if let earlier = tables[key] {
                let advice = isArray
                    ? "it cannot also be an array of tables; use [[\(key)]] for every entry or [\(key)] once"
                    : "put all its keys under one [\(key)] header"
                throw error("\(written): the table [\(key)] is already defined on line \(earlier.position.line); \(advice)", at: start)
            }
            if let earlier = arraysOfTables[key], !isArray {
                throw error("\(written): '\(key)' is already an array of tables ([[\(key)]] on line \(earlier[0].position.line)); write [[\(key)]] for every entry",
                            at: start)
            }
            let table = TOMLTable(position: start)
            if isArray {
                if arraysOfTables[key] == nil { headerOrder.append((key, start)) }
                arraysOfTables[key, default: []].append(table)
                section = .arrayOfTables(key)
            } else {
                headerOrder.append((key, start))
                tables[key] = table
                section = .table(key)
            }
        }

        private mutating func parseKeyValue() throws(ClusterConfigurationError) {
            let keyPosition = position
            let key = try parseKey(expected: "expected a key (letters, digits, '_' and '-'), a [table] or an [[array of tables]] header")
            skipWhitespace()
            guard current == "=" else { throw error("expected '=' after the key '\(key)'") }
            index += 1
            skipWhitespace()
            let value = try parseValue(
                expected: "expected a value after '=' (a \"string\", a number, true/false or [list])", inList: false)
            try expectEndOfLine(after: "the value")
            let entry = TOMLEntry(key: key, keyPosition: keyPosition, value: value)
            let earlier: TOMLEntry?
            switch section {
            case .root:
                earlier = root.insert(entry) ? nil : root[key]
            case .table(let name):
                earlier = tables[name]!.insert(entry) ? nil : tables[name]![key]
            case .arrayOfTables(let name):
                let last = arraysOfTables[name]!.count - 1
                earlier = arraysOfTables[name]![last].insert(entry) ? nil : arraysOfTables[name]![last][key]
            }
            if let earlier {
                throw error("duplicate key '\(key)': already set on line \(earlier.keyPosition.line); each key may appear once per table",
                            at: keyPosition)
            }
        }

        /// A bare key; quoted and dotted keys are named as such, since they are valid TOML that this subset leaves out.
        private mutating func parseKey(expected: String) throws(ClusterConfigurationError) -> String {
            if current == "\"" || current == "'" {
                throw error("quoted keys are not supported; write the key bare: letters, digits, '_' and '-'")
            }
            let start = position
            let key = readBareKey()
            guard !key.isEmpty else { throw error(expected) }
            let afterKey = index
            skipWhitespace()
            if current == "." {
                var dotted = key
                while current == "." {
                    index += 1
                    skipWhitespace()
                    dotted += "." + readBareKey()
                    skipWhitespace()
                }
                throw error("dotted keys (\(dotted)) are not supported; put the key under a [\(key)] header instead", at: start)
            }
            index = afterKey
            return key
        }

        private mutating func readBareKey() -> String {
            var key = ""
            while let scalar = current, Self.isBareKeyScalar(scalar) {
                key.unicodeScalars.append(scalar)
                index += 1
            }
            return key
        }

        private mutating func expectEndOfLine(after what: String) throws(ClusterConfigurationError) {
            skipWhitespace()
            guard let scalar = current, scalar != "#" else { return }
            if scalar == "\r" { throw error("a carriage return must be followed by a line feed (end lines with LF or CRLF)") }
            throw error("expected the end of the line or a # comment after \(what)")
        }

        // MARK: Values

        private mutating func parseValue(expected: String, inList: Bool) throws(ClusterConfigurationError) -> TOMLValue {
            let start = position
            guard let first = current, first != "#" else { throw error(expected) }
            let kind: TOMLValue.Kind
            switch first {
            case "\"":
                kind = .string(try parseBasicString())
            case "'":
                throw error("literal strings ('...') are not supported; write a basic \"string\"")
            case "[":
                if inList { throw error("a list holds strings or numbers, not other lists") }
                kind = try parseArray()
            case "{":
                throw error("inline tables ({...}) are not supported; write a [table] header instead")
            case "0"..."9", "+", "-":
                kind = .integer(try parseInteger())
            default:
                let word = readWord()
                switch word {
                case "true": kind = .boolean(true)
                case "false": kind = .boolean(false)
                case "inf", "nan": throw error("floats are not supported; write a whole number", at: start)
                case "": throw error(expected)
                default:
                    throw error("expected a value, found the bare word '\(word)'; write a string in double quotes: \"\(word)\"",
                                at: start)
                }
            }
            return TOMLValue(kind: kind, position: start)
        }

        /// Reads from the opening quote through the closing one.
        private mutating func parseBasicString() throws(ClusterConfigurationError) -> String {
            let start = position
            if peek(1) == "\"", peek(2) == "\"" {
                throw error("multi-line strings (\"\"\") are not supported; write one \"string\" on one line, with \\n for a line break")
            }
            index += 1
            var value = ""
            while true {
                guard let scalar = current else {
                    throw error("unterminated string: expected a closing '\"' on the same line", at: start)
                }
                switch scalar {
                case "\"":
                    index += 1
                    return value
                case "\\":
                    let escaped: Unicode.Scalar
                    switch peek(1) {
                    case "\\": escaped = "\\"
                    case "\"": escaped = "\""
                    case "n": escaped = "\n"
                    case "t": escaped = "\t"
                    case let other?:
                        throw error("unsupported escape '\\\(Self.printable(other))' in a string; the escapes are \\\\, \\\", \\n and \\t")
                    case nil:
                        throw error("unterminated string: a '\\' at the end of the line escapes nothing", at: position)
                    }
                    value.unicodeScalars.append(escaped)
                    index += 2
                case "\t":
                    value.unicodeScalars.append(scalar)
                    index += 1
                default:
                    guard !ClusterTOML.isControl(scalar) else {
                        throw error("control character \(ClusterTOML.codePoint(scalar)) is not allowed in a string; write \\n or \\t for a line break or tab")
                    }
                    value.unicodeScalars.append(scalar)
                    index += 1
                }
            }
        }

        /// Decimal only, as in TOML: an optional sign, no leading zeros, each '_' between two digits.
        /// The whole run of number-like characters is read first, so that a float,
        /// a date or a hexadecimal number is named as such instead of half-read.
        private mutating func parseInteger() throws(ClusterConfigurationError) -> Int {
            let start = position
            var token: [Unicode.Scalar] = []
            while let scalar = current, Self.isBareKeyScalar(scalar) || scalar == "+" || scalar == "." || scalar == ":" {
                token.append(scalar)
                index += 1
            }
            let text = String(String.UnicodeScalarView(token))
            let negative = token.first == "-"
            let body = token.first == "+" || negative ? Array(token.dropFirst()) : token
            let bodyText = String(String.UnicodeScalarView(body))

            if bodyText == "inf" || bodyText == "nan" || body.contains(".")
                || (body.first.map(Self.isDigit) == true && body.contains(where: { $0 == "e" || $0 == "E" })
                    && !bodyText.hasPrefix("0x")) {
                throw error("floats are not supported; write a whole number", at: start)
            }
            if body.contains(":") || Self.looksLikeDate(body) {
                throw error("dates and times are not supported; write a string or a number", at: start)
            }
            if bodyText.hasPrefix("0x") || bodyText.hasPrefix("0o") || bodyText.hasPrefix("0b") {
                throw error("hexadecimal, octal and binary numbers are not supported; write a decimal number", at: start)
            }
            guard !body.isEmpty, body.allSatisfy({ Self.isDigit($0) || $0 == "_" }) else {
                throw error("expected a number (decimal digits, with '_' allowed between them), found '\(text)'", at: start)
            }
            for (offset, scalar) in body.enumerated() where scalar == "_" {
                let before = offset > 0 && Self.isDigit(body[offset - 1])
                let after = offset + 1 < body.count && Self.isDigit(body[offset + 1])
                guard before, after else {
                    throw error("'_' in a number must stand between two digits, as in 1_000", at: start)
                }
            }
            let digits = body.filter { $0 != "_" }
            if digits.count > 1, digits[0] == "0" {
                throw error("leading zeros are not allowed in a number; write '\(text)' without them", at: start)
            }
            var value = 0
            for digit in digits {
                let (shifted, overflowed) = value.multipliedReportingOverflow(by: 10)
                let (sum, overflowedAgain) = shifted.addingReportingOverflow(Int(digit.value - 48))
                guard !overflowed, !overflowedAgain else {
                    throw error("the number \(text) is out of range (the largest is \(Int.max))", at: start)
                }
                value = sum
            }
            // Int.min has no positive counterpart, so it is out of range here; no setting comes near it.
            return negative ? -value : value
        }

        private mutating func parseArray() throws(ClusterConfigurationError) -> TOMLValue.Kind {
            index += 1
            var elements: [TOMLValue] = []
            while true {
                skipWhitespace()
                if current == "]" {
                    index += 1
                    return .array(elements)
                }
                let element = try parseValue(
                    expected: current == nil || current == "#"
                        ? "expected ']' to close the list; a list must end on the line it starts"
                        : "expected a list element (a \"string\" or a number) or ']'",
                    inList: true)
                switch (element.kind, elements.first?.kind) {
                case (.string, .string?), (.string, nil), (.integer, .integer?), (.integer, nil):
                    break
                case (.string, .integer?):
                    throw error("expected a number like the list's first element, found a string", at: element.position)
                case (.integer, .string?):
                    throw error("expected a \"string\" like the list's first element, found a number", at: element.position)
                default:
                    throw error("a list holds strings or numbers, not \(element.kindName)", at: element.position)
                }
                elements.append(element)
                skipWhitespace()
                switch current {
                case ",": index += 1
                case "]": continue
                case nil, "#": throw error("expected ',' or ']' after a list element; a list must end on the line it starts")
                default: throw error("expected ',' or ']' after a list element")
                }
            }
        }

        // MARK: Scanning

        private var current: Unicode.Scalar? { index < line.count ? line[index] : nil }

        private func peek(_ offset: Int) -> Unicode.Scalar? {
            index + offset < line.count ? line[index + offset] : nil
        }

        private var position: TOMLPosition { TOMLPosition(line: lineNumber, column: index + 1) }

        private mutating func skipWhitespace() {
            while current == " " || current == "\t" { index += 1 }
        }

        private mutating func readWord() -> String {
            var word = ""
            while let scalar = current, Self.isBareKeyScalar(scalar) || scalar == "." {
                word.unicodeScalars.append(scalar)
                index += 1
            }
            return word
        }

        private func error(_ message: String, at place: TOMLPosition? = nil) -> ClusterConfigurationError {
            let at = place ?? position
            return ClusterConfigurationError(message, line: at.line, column: at.column)
        }

        static func isBareKeyScalar(_ scalar: Unicode.Scalar) -> Bool {
            switch scalar {
            case "A"..."Z", "a"..."z", "0"..."9", "_", "-": true
            default: false
            }
        }

        static func isDigit(_ scalar: Unicode.Scalar) -> Bool { ("0"..."9").contains(scalar) }

        /// `1979-05-27`: digits, '-', digits, '-', digits.
        static func looksLikeDate(_ body: [Unicode.Scalar]) -> Bool {
            let parts = body.split(separator: "-", omittingEmptySubsequences: false)
            return parts.count == 3 && parts.allSatisfy { !$0.isEmpty && isDigit($0.first!) }
        }

        static func printable(_ scalar: Unicode.Scalar) -> String {
            ClusterTOML.isControl(scalar) ? ClusterTOML.codePoint(scalar) : String(Character(scalar))
        }
    }
}
