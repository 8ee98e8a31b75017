// Goal: the cluster file's TOML subset reads every construct it allows into
// the right values with the right places, and rejects everything else TOML
// (or a slip of the hand) could put there with a message that names the line
// and column and says what was expected, never by misreading it.
// Method: ClusterTOML.parse on small texts; values are compared whole, errors
// by their full description, one construct or one mistake per test.
@testable import BatonCore
import XCTest

private func parse(_ text: String) throws(ClusterConfigurationError) -> TOMLTable {
    try ClusterTOML.parse(text)
}

/// The error's description, or a note that there was none, so a failing assertion shows what happened.
private func failure(_ text: String) -> String {
    do {
        let table = try parse(text)
        return "no error: parsed \(table.entries.map(\.key))"
    } catch {
        return error.description
    }
}

private func value(_ text: String, _ key: String = "k") throws -> TOMLValue.Kind? {
    try parse(text)[key]?.value.kind
}

private func at(_ line: Int, _ column: Int) -> TOMLPosition { TOMLPosition(line: line, column: column) }

final class ClusterTOMLTests: XCTestCase {
    // MARK: What the subset allows

    func testEmptyTextAndOnlyCommentsAreAnEmptyTable() throws {
        XCTAssertEqual(try parse("").entries, [])
        XCTAssertEqual(try parse("\n  \n# a comment\n\t# another\n").entries, [])
    }

    func testKeyValueRecordsKeyAndValuePlaces() throws {
        let table = try parse("\n  name\t=   \"a\"   # trailing comment\n")
        XCTAssertEqual(table["name"], TOMLEntry(key: "name", keyPosition: at(2, 3),
                                                value: TOMLValue(kind: .string("a"), position: at(2, 12))))
    }

    func testBareKeysTakeLettersDigitsUnderscoreAndDash() throws {
        let table = try parse("a-B_9 = 1\n0 = 2\n")
        XCTAssertEqual(table.entries.map(\.key), ["a-B_9", "0"])
    }

    func testSpacesAroundEqualsAreOptional() throws {
        XCTAssertEqual(try value("k=1"), .integer(1))
    }

    func testBasicStringsDecodeTheirEscapes() throws {
        XCTAssertEqual(try value(#"k = "back\\slash \"quoted\" line\nbreak\ttab""#), .string("back\\slash \"quoted\" line\nbreak\ttab"))
    }

    func testStringsKeepLiteralTabsHashesAndUnicode() throws {
        XCTAssertEqual(try value("k = \"a\tb # not a comment ünï\""), .string("a\tb # not a comment ünï"))
        XCTAssertEqual(try value("k = \"\""), .string(""))
    }

    func testIntegersWithSignsAndSeparators() throws {
        XCTAssertEqual(try value("k = 0"), .integer(0))
        XCTAssertEqual(try value("k = 42"), .integer(42))
        XCTAssertEqual(try value("k = 1_000_000"), .integer(1_000_000))
        XCTAssertEqual(try value("k = -5"), .integer(-5))
        XCTAssertEqual(try value("k = +7"), .integer(7))
        XCTAssertEqual(try value("k = -0"), .integer(0))
        XCTAssertEqual(try value("k = 9223372036854775807"), .integer(Int.max))
    }

    func testBooleans() throws {
        XCTAssertEqual(try value("k = true"), .boolean(true))
        XCTAssertEqual(try value("k = false # no"), .boolean(false))
    }

    func testListsOfStringsAndOfIntegers() throws {
        XCTAssertEqual(try value("k = []"), .array([]))
        XCTAssertEqual(try value("k = [ ]"), .array([]))
        XCTAssertEqual(try value(#"k = ["x", "y"]"#), .array([
            TOMLValue(kind: .string("x"), position: at(1, 6)), TOMLValue(kind: .string("y"), position: at(1, 11)),
        ]))
        XCTAssertEqual(try value("k = [1,2 , 3]"), .array([
            TOMLValue(kind: .integer(1), position: at(1, 6)), TOMLValue(kind: .integer(2), position: at(1, 8)),
            TOMLValue(kind: .integer(3), position: at(1, 12)),
        ]))
    }

    func testListsAllowATrailingComma() throws {
        XCTAssertEqual(try value(#"k = ["x", ]"#), .array([TOMLValue(kind: .string("x"), position: at(1, 6))]))
    }

    func testTableCollectsTheKeysBelowItsHeader() throws {
        let root = try parse("top = 1\n[timings]\nx = 2\ny = 3\n")
        XCTAssertEqual(root.entries.map(\.key), ["top", "timings"])
        guard case .table(let table)? = root["timings"]?.value.kind else { return XCTFail("not a table") }
        XCTAssertEqual(table.position, at(2, 1))
        XCTAssertEqual(table.entries.map(\.key), ["x", "y"])
    }

    func testHeadersAllowSpacesInsideAndACommentAfter() throws {
        let root = try parse("[ t ]  # note\nx = 1\n[[ a ]]\n")
        XCTAssertNotNil(root["t"])
        XCTAssertNotNil(root["a"])
    }

    func testArrayOfTablesKeepsOneTablePerHeaderInOrder() throws {
        let root = try parse("[[nodes]]\nname = \"a\"\n\n[[nodes]]\nname = \"b\"\n[[exports]]\nname = \"e\"\n")
        XCTAssertEqual(root.entries.map(\.key), ["nodes", "exports"])
        guard case .arrayOfTables(let nodes)? = root["nodes"]?.value.kind else { return XCTFail("not an array of tables") }
        XCTAssertEqual(nodes.map(\.position), [at(1, 1), at(4, 1)])
        XCTAssertEqual(nodes.map { $0["name"]?.value.kind }, [.string("a"), .string("b")])
    }

    func testTheSameKeyInTwoTablesOfAnArrayIsNotADuplicate() throws {
        XCTAssertNoThrow(try parse("[[n]]\nk = 1\n[[n]]\nk = 1\n"))
    }

    func testCRLFLineEndingsAndAByteOrderMark() throws {
        let root = try parse("\u{FEFF}a = 1\r\n[t]\r\nb = \"x\"\r\n")
        XCTAssertEqual(root["a"]?.value.kind, .integer(1))
        XCTAssertEqual(root["a"]?.keyPosition, at(1, 1))
        guard case .table(let table)? = root["t"]?.value.kind else { return XCTFail("not a table") }
        XCTAssertEqual(table["b"]?.value.kind, .string("x"))
    }

    // MARK: Keys and lines

    func testMissingValue() {
        XCTAssertEqual(failure("a = 1\n\nsecret =\n"),
                       #"cluster file line 3, column 9: expected a value after '=' (a "string", a number, true/false or [list])"#)
        XCTAssertEqual(failure("k = # nothing"),
                       #"cluster file line 1, column 5: expected a value after '=' (a "string", a number, true/false or [list])"#)
    }

    func testMissingEquals() {
        XCTAssertEqual(failure("name \"a\""), "cluster file line 1, column 6: expected '=' after the key 'name'")
    }

    func testLineWithoutAKey() {
        XCTAssertEqual(failure("= 1"),
                       "cluster file line 1, column 1: expected a key (letters, digits, '_' and '-'), a [table] or an [[array of tables]] header")
        XCTAssertEqual(failure("  ünï = 1"),
                       "cluster file line 1, column 3: expected a key (letters, digits, '_' and '-'), a [table] or an [[array of tables]] header")
    }

    func testQuotedKeysAreRejected() {
        XCTAssertEqual(failure("\"name\" = 1"),
                       "cluster file line 1, column 1: quoted keys are not supported; write the key bare: letters, digits, '_' and '-'")
        XCTAssertEqual(failure("'name' = 1"),
                       "cluster file line 1, column 1: quoted keys are not supported; write the key bare: letters, digits, '_' and '-'")
    }

    func testDottedKeysAreRejected() {
        XCTAssertEqual(failure("\n  timings.probe_misses = 3"),
                       "cluster file line 2, column 3: dotted keys (timings.probe_misses) are not supported; put the key under a [timings] header instead")
        XCTAssertEqual(failure("a . b = 3"),
                       "cluster file line 1, column 1: dotted keys (a.b) are not supported; put the key under a [a] header instead")
        XCTAssertEqual(failure("[nodes.a]"),
                       "cluster file line 1, column 2: dotted keys (nodes.a) are not supported; put the key under a [nodes] header instead")
    }

    func testTextAfterAValue() {
        XCTAssertEqual(failure("k = 1 2"), "cluster file line 1, column 7: expected the end of the line or a # comment after the value")
        XCTAssertEqual(failure("k = \"a\"b"), "cluster file line 1, column 8: expected the end of the line or a # comment after the value")
    }

    func testLoneCarriageReturn() {
        XCTAssertEqual(failure("k = 1\r\r\n"),
                       "cluster file line 1, column 6: a carriage return must be followed by a line feed (end lines with LF or CRLF)")
        XCTAssertEqual(failure("\r\r\n"),
                       "cluster file line 1, column 1: a carriage return must be followed by a line feed (end lines with LF or CRLF)")
    }

    // MARK: Strings

    func testUnterminatedString() {
        XCTAssertEqual(failure("a = 1\nk = \"open"),
                       "cluster file line 2, column 5: unterminated string: expected a closing '\"' on the same line")
    }

    func testBackslashAtTheEndOfTheLine() {
        XCTAssertEqual(failure(#"k = "a\"#),
                       #"cluster file line 1, column 7: unterminated string: a '\' at the end of the line escapes nothing"#)
    }

    func testUnsupportedEscapes() {
        XCTAssertEqual(failure(#"k = "C:\dir""#),
                       #"cluster file line 1, column 8: unsupported escape '\d' in a string; the escapes are \\, \", \n and \t"#)
        XCTAssertEqual(failure(#"k = "\u00e9""#),
                       #"cluster file line 1, column 6: unsupported escape '\u' in a string; the escapes are \\, \", \n and \t"#)
        XCTAssertEqual(failure("k = \"\\\u{7}\""),
                       #"cluster file line 1, column 6: unsupported escape '\U+0007' in a string; the escapes are \\, \", \n and \t"#)
    }

    func testControlCharactersInStrings() {
        XCTAssertEqual(failure("k = \"a\u{1}b\""),
                       #"cluster file line 1, column 7: control character U+0001 is not allowed in a string; write \n or \t for a line break or tab"#)
        XCTAssertEqual(failure("k = \"a\u{7F}\""),
                       #"cluster file line 1, column 7: control character U+007F is not allowed in a string; write \n or \t for a line break or tab"#)
    }

    func testMultiLineAndLiteralStringsAreRejected() {
        XCTAssertEqual(failure(#"k = """text""""#),
                       #"cluster file line 1, column 5: multi-line strings (""") are not supported; write one "string" on one line, with \n for a line break"#)
        XCTAssertEqual(failure("k = 'text'"),
                       #"cluster file line 1, column 5: literal strings ('...') are not supported; write a basic "string""#)
    }

    func testInlineTablesAreRejected() {
        XCTAssertEqual(failure("k = { a = 1 }"),
                       "cluster file line 1, column 5: inline tables ({...}) are not supported; write a [table] header instead")
    }

    func testBareWordsAreNotValues() {
        XCTAssertEqual(failure("site = lan1"),
                       #"cluster file line 1, column 8: expected a value, found the bare word 'lan1'; write a string in double quotes: "lan1""#)
        XCTAssertEqual(failure("k = True"),
                       #"cluster file line 1, column 5: expected a value, found the bare word 'True'; write a string in double quotes: "True""#)
    }

    // MARK: Numbers

    func testFloatsAreRejected() {
        for text in ["1.5", "-0.5", "1e3", "6.02E23", "inf", "-inf", "+nan", "nan"] {
            XCTAssertEqual(failure("k = \(text)"), "cluster file line 1, column 5: floats are not supported; write a whole number", text)
        }
    }

    func testDatesAndTimesAreRejected() {
        for text in ["1979-05-27", "07:32:00", "1979-05-27T07:32:00Z"] {
            XCTAssertEqual(failure("k = \(text)"),
                           "cluster file line 1, column 5: dates and times are not supported; write a string or a number", text)
        }
    }

    func testOtherBasesAreRejected() {
        for text in ["0x1F", "0o17", "0b101", "0xdead_beef"] {
            XCTAssertEqual(failure("k = \(text)"),
                           "cluster file line 1, column 5: hexadecimal, octal and binary numbers are not supported; write a decimal number", text)
        }
    }

    func testLeadingZerosAreRejected() {
        XCTAssertEqual(failure("port = 07000"),
                       "cluster file line 1, column 8: leading zeros are not allowed in a number; write '07000' without them")
        XCTAssertEqual(failure("k = -01"), "cluster file line 1, column 5: leading zeros are not allowed in a number; write '-01' without them")
    }

    func testUnderscoresMustStandBetweenDigits() {
        for text in ["1__000", "1_", "-_1", "1_000_"] {
            XCTAssertEqual(failure("k = \(text)"),
                           "cluster file line 1, column 5: '_' in a number must stand between two digits, as in 1_000", text)
        }
    }

    func testMalformedNumbers() {
        XCTAssertEqual(failure("k = 12ab"),
                       "cluster file line 1, column 5: expected a number (decimal digits, with '_' allowed between them), found '12ab'")
        XCTAssertEqual(failure("k = -"),
                       "cluster file line 1, column 5: expected a number (decimal digits, with '_' allowed between them), found '-'")
        XCTAssertEqual(failure("k = +-1"),
                       "cluster file line 1, column 5: expected a number (decimal digits, with '_' allowed between them), found '+-1'")
    }

    func testNumbersOutOfRange() {
        XCTAssertEqual(failure("k = 9223372036854775808"),
                       "cluster file line 1, column 5: the number 9223372036854775808 is out of range (the largest is 9223372036854775807)")
        XCTAssertEqual(failure("k = -99999999999999999999"),
                       "cluster file line 1, column 5: the number -99999999999999999999 is out of range (the largest is 9223372036854775807)")
    }

    // MARK: Lists

    func testUnclosedList() {
        XCTAssertEqual(failure(#"k = ["a", "b""#),
                       "cluster file line 1, column 14: expected ',' or ']' after a list element; a list must end on the line it starts")
        XCTAssertEqual(failure(#"k = ["a",  # more below"#),
                       "cluster file line 1, column 12: expected ']' to close the list; a list must end on the line it starts")
        XCTAssertEqual(failure("k = ["), "cluster file line 1, column 6: expected ']' to close the list; a list must end on the line it starts")
    }

    func testListElementsNeedCommas() {
        XCTAssertEqual(failure(#"k = ["a" "b"]"#), "cluster file line 1, column 10: expected ',' or ']' after a list element")
    }

    func testEmptyListElement() {
        XCTAssertEqual(failure("k = [1,,2]"), #"cluster file line 1, column 8: expected a list element (a "string" or a number) or ']'"#)
        XCTAssertEqual(failure("k = [,]"), #"cluster file line 1, column 6: expected a list element (a "string" or a number) or ']'"#)
    }

    func testListsDoNotMixTypes() {
        XCTAssertEqual(failure(#"k = ["a", 1]"#), "cluster file line 1, column 11: expected a \"string\" like the list's first element, found a number")
        XCTAssertEqual(failure(#"k = [1, "a"]"#), "cluster file line 1, column 9: expected a number like the list's first element, found a string")
    }

    func testListsHoldOnlyStringsAndNumbers() {
        XCTAssertEqual(failure("k = [[1]]"), "cluster file line 1, column 6: a list holds strings or numbers, not other lists")
        XCTAssertEqual(failure("k = [true]"), "cluster file line 1, column 6: a list holds strings or numbers, not a boolean")
        XCTAssertEqual(failure("k = [{}]"),
                       "cluster file line 1, column 6: inline tables ({...}) are not supported; write a [table] header instead")
    }

    // MARK: Headers

    func testMalformedHeaders() {
        XCTAssertEqual(failure("[]"), "cluster file line 1, column 2: expected a table name (letters, digits, '_' and '-') after '['")
        XCTAssertEqual(failure("[[ ]]"), "cluster file line 1, column 4: expected a table name (letters, digits, '_' and '-') after '[['")
        XCTAssertEqual(failure("[timings"), "cluster file line 1, column 9: expected ']' to close the [timings] header")
        XCTAssertEqual(failure("[[nodes]"), "cluster file line 1, column 8: expected ']]' to close the [[nodes]] header")
        XCTAssertEqual(failure("[[nodes] ]"), "cluster file line 1, column 8: expected ']]' to close the [[nodes]] header")
        XCTAssertEqual(failure("[timings] x = 1"),
                       "cluster file line 1, column 11: expected the end of the line or a # comment after the header")
        XCTAssertEqual(failure("[\"timings\"]"),
                       "cluster file line 1, column 2: quoted keys are not supported; write the key bare: letters, digits, '_' and '-'")
    }

    // MARK: Duplicates and redefinitions

    func testDuplicateKeys() {
        XCTAssertEqual(failure("a = 1\nb = 2\n a = 3"),
                       "cluster file line 3, column 2: duplicate key 'a': already set on line 1; each key may appear once per table")
        XCTAssertEqual(failure("[t]\na = 1\na = 1"),
                       "cluster file line 3, column 1: duplicate key 'a': already set on line 2; each key may appear once per table")
        XCTAssertEqual(failure("[[n]]\na = 1\n[[n]]\na = 1\na = 2"),
                       "cluster file line 5, column 1: duplicate key 'a': already set on line 4; each key may appear once per table")
    }

    func testTableDefinedTwice() {
        XCTAssertEqual(failure("[timings]\na = 1\n\n[timings]\nb = 2"),
                       "cluster file line 4, column 1: [timings]: the table [timings] is already defined on line 1; put all its keys under one [timings] header")
    }

    func testTableThenArrayOfTables() {
        XCTAssertEqual(failure("[nodes]\n[[nodes]]"),
                       "cluster file line 2, column 1: [[nodes]]: the table [nodes] is already defined on line 1; it cannot also be an array of tables; use [[nodes]] for every entry or [nodes] once")
    }

    func testArrayOfTablesThenTable() {
        XCTAssertEqual(failure("[[nodes]]\n[[nodes]]\n[nodes]"),
                       "cluster file line 3, column 1: [nodes]: 'nodes' is already an array of tables ([[nodes]] on line 1); write [[nodes]] for every entry")
    }

    func testHeaderThatRedefinesAKey() {
        XCTAssertEqual(failure("timings = 1\n[timings]"),
                       "cluster file line 2, column 1: [timings] redefines the key 'timings' set on line 1; write its contents either as a key or under the header, not both")
        XCTAssertEqual(failure("nodes = []\n\n  [[nodes]]"),
                       "cluster file line 3, column 3: [[nodes]] redefines the key 'nodes' set on line 1; write its contents either as a key or under the header, not both")
    }

    // MARK: Limits

    func testFileSizeIsBounded() {
        let text = String(repeating: "#", count: ClusterTOML.maxFileSizeBytes + 1)
        XCTAssertEqual(failure(text),
                       "cluster configuration: the file is 1048577 bytes, over the limit of 1048576; a cluster file is a few kilobytes, check that the right file was given")
        XCTAssertNoThrow(try parse(String(repeating: "#", count: ClusterTOML.maxFileSizeBytes)))
    }
}
