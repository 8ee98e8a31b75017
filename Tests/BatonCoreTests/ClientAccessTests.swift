// Goal: an export's client lists grant read-write, read-only or nothing by
// the client certificate's name, with `*` and `?` patterns over the whole name.
// Method: names and patterns written out, and a slow reference matcher on
// random short names and patterns.
import BatonCore
import XCTest

final class ClientAccessTests: XCTestCase {
    func testListsGrantByName() {
        let access = ClientAccess(readWrite: ["web-*", "build"], readOnly: ["backup-??", "build"])
        XCTAssertEqual(access.grant("web-1"), .readWrite)
        XCTAssertEqual(access.grant("build"), .readWrite, "a name on both lists may write")
        XCTAssertEqual(access.grant("backup-01"), .readOnly)
        guard case .refused(let why) = access.grant("backup-001") else { return XCTFail("a name on no list was granted") }
        XCTAssertTrue(why.contains("backup-001") && why.contains("read_only_clients"), why)
        XCTAssertEqual(ClientAccess.everyone.grant("anyone at all"), .readWrite)
        XCTAssertEqual(ClientAccess(readWrite: [], readOnly: []).grant("x"), .refused("client \"x\" is in neither clients [] nor read_only_clients []"))
    }

    func testPatternsMatchTheWholeName() {
        let cases: [(String, String, Bool)] = [
            ("web-1", "web-*", true), ("xweb-1", "web-*", false), ("web-", "web-*", true), ("web", "web-*", false),
            ("a.b.c", "*.c", true), ("a.b.c", "*.b", false), ("abc", "a?c", true), ("ac", "a?c", false),
            ("", "*", true), ("", "", true), ("a", "", false), ("aaab", "*a*b", true), ("ab", "**b", true),
            ("mississippi", "m*iss*ppi", true), ("mississippi", "m*iss*ppx", false),
        ]
        for (name, pattern, expected) in cases {
            XCTAssertEqual(ClientAccess.matches(name, pattern), expected, "\(name) ~ \(pattern)")
        }
    }

    func testPatternsAgreeWithAReferenceMatcher() {
        func reference(_ n: Substring, _ p: Substring) -> Bool {
            guard let first = p.first else { return n.isEmpty }
            if first == "*" { return reference(n, p.dropFirst()) || (!n.isEmpty && reference(n.dropFirst(), p)) }
            guard let c = n.first, first == "?" || first == c else { return false }
            return reference(n.dropFirst(), p.dropFirst())
        }
        var seed: UInt64 = 0x5EED
        func next(_ bound: Int) -> Int {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Int((seed >> 33) % UInt64(bound))
        }
        for _ in 0..<5000 {
            let name = String((0..<next(7)).map { _ in "ab".randomElementSeeded(next(2)) })
            let pattern = String((0..<next(6)).map { _ in "ab*?".randomElementSeeded(next(4)) })
            XCTAssertEqual(ClientAccess.matches(name, pattern), reference(Substring(name), Substring(pattern)), "\(name) ~ \(pattern)")
        }
    }
}

extension String {
    fileprivate func randomElementSeeded(_ index: Int) -> Character { self[self.index(startIndex, offsetBy: index)] }
}
