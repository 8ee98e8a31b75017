// Goal: `--log-format json` writes one JSON object per line that a
// collector can parse, whatever the message and metadata hold.
// Method: log through the handler into a buffer; parse with JSONSerialization.
import BatonRuntime
import Foundation
import Logging
import NIOConcurrencyHelpers
import XCTest

final class LogHandlerTests: XCTestCase {
    func testEachLineIsOneJSONObjectWithTheMetadataAsFields() throws {
        let lines = NIOLockedValueBox<[String]>([])
        var logger = Logger(label: "baton.agent") { label in
            JSONLogHandler(label: label) { line in lines.withLockedValue { $0.append(line) } }
        }
        logger[metadataKey: "node"] = "a"
        let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} é 🗂"
        logger.warning("swap: \(awkward)", metadata: [
            "export": "demo", "epoch": "\(7)", "message": "a key that clashes",
            "paths": .array(["1", "2"]), "peer": .dictionary(["name": "b"]),
        ])
        let written = lines.withLockedValue { $0 }
        XCTAssertEqual(written.count, 1)
        XCTAssertTrue(written[0].hasSuffix("}\n"))
        XCTAssertEqual(written[0].filter { $0 == "\n" }.count, 1, "a line break inside the line: \(written[0])")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as? [String: Any])
        XCTAssertEqual(object["message"] as? String, "swap: \(awkward)")
        XCTAssertEqual(object["metadata_message"] as? String, "a key that clashes")
        XCTAssertEqual(object["level"] as? String, "warning")
        XCTAssertEqual(object["label"] as? String, "baton.agent")
        XCTAssertEqual(object["export"] as? String, "demo")
        XCTAssertEqual(object["epoch"] as? String, "7")
        XCTAssertEqual(object["node"] as? String, "a")
        XCTAssertEqual(object["paths"] as? [String], ["1", "2"])
        XCTAssertEqual((object["peer"] as? [String: Any])?["name"] as? String, "b")
        let time = try XCTUnwrap(object["time"] as? String)
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        XCTAssertNotNil(iso.date(from: time), time)
        XCTAssertTrue(written[0].hasPrefix("{\"time\":"), "time is not the first field: \(written[0])")
    }
}
