// Independent OPC UA server (node-opcua) for tests/test_opcua_interop.py.
//
// Usage: node server.js --port N --ready FILE --pki DIR [--cert PEM --key PEM]
//                       [--application-uri URI] [--user NAME --password SECRET]
//
// Serves, in namespace urn:ot-gateway:interop (index 2; node-opcua's own namespace is 1):
//   nsu=urn:ot-gateway:interop;s=Interop.Counter  UInt32   floor(epoch seconds), SourceTimestamp
//                                                          = that second (the oracle)
//   ...;s=Interop.Sine    Double   10 * sin(2 pi t / 60), updated every 100 ms
//   ...;s=Interop.Flag    Boolean  true on even seconds
//   ...;s=Interop.Label   String   "tick-<second mod 10>"
//   ...;s=Interop.Faulty  Double   status BadSensorFailure
//   ...;s=Interop.Stale   Double   42.5 with status UncertainLastUsableValue
//   ...;s=Interop.Level   Double   AnalogItem, EURange [0, 200], EngineeringUnits degree Celsius
//                                  (UNECE CEL): 100 + 0.5 sin(2 pi t / 2 s) + 30 on odd 2-s
//                                  periods, updated every 100 ms (percent deadband tests)
//   ...;s=Interop.Setpoint Float   20.0, writable (CurrentRead | CurrentWrite); node-opcua
//                                  refuses a Variant of another type (BadTypeMismatch)
// Endpoints: SecurityPolicy None and Basic256Sha256 (Sign, SignAndEncrypt) on 127.0.0.1.
// The ready file (JSON, written once listening) holds pid, endpoint and the server certificate path.
"use strict";

const fs = require("fs");
const path = require("path");
const {
    OPCUAServer,
    OPCUACertificateManager,
    Variant,
    DataType,
    StatusCodes,
    SecurityPolicy,
    MessageSecurityMode,
    standardUnits,
} = require("node-opcua");

function parseArgs(argv) {
    const out = {};
    for (let i = 0; i < argv.length; i += 2) {
        out[argv[i].replace(/^--/, "")] = argv[i + 1];
    }
    return out;
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    const port = parseInt(args.port || "0", 10);
    const pki = path.resolve(args.pki || "pki");
    const certificateManager = new OPCUACertificateManager({
        rootFolder: pki,
        automaticallyAcceptUnknownCertificate: true,
    });
    await certificateManager.initialize();
    const users = {};
    if (args.user) {
        users[args.user] = args.password || "";
    }
    const options = {
        port,
        host: "127.0.0.1",
        hostname: "127.0.0.1",
        resourcePath: "/interop",
        serverCertificateManager: certificateManager,
        securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256],
        securityModes: [
            MessageSecurityMode.None,
            MessageSecurityMode.Sign,
            MessageSecurityMode.SignAndEncrypt,
        ],
        allowAnonymous: true,
        userManager: {
            isValidUser: (name, password) => name in users && users[name] === password,
        },
        buildInfo: { productName: "ot-gateway interop server", buildNumber: "1" },
    };
    if (args["application-uri"]) {
        options.serverInfo = { applicationUri: args["application-uri"] };
    }
    if (args.cert && args.key) {
        options.certificateFile = path.resolve(args.cert);
        options.privateKeyFile = path.resolve(args.key);
    }
    const server = new OPCUAServer(options);
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.registerNamespace("urn:ot-gateway:interop");
    const device = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Interop" });
    const make = (name, dataType, value) =>
        ns.addVariable({
            componentOf: device,
            browseName: name,
            nodeId: `s=Interop.${name}`,
            dataType,
            value: { dataType: DataType[dataType], value },
        });
    const counter = make("Counter", "UInt32", 0);
    const sine = make("Sine", "Double", 0.0);
    const flag = make("Flag", "Boolean", false);
    const label = make("Label", "String", "");
    const faulty = make("Faulty", "Double", 0.0);
    const stale = make("Stale", "Double", 42.5);
    const level = ns.addAnalogDataItem({
        componentOf: device,
        browseName: "Level",
        nodeId: "s=Interop.Level",
        dataType: "Double",
        engineeringUnitsRange: { low: 0, high: 200 },
        engineeringUnits: standardUnits.degree_celsius,
        value: { dataType: DataType.Double, value: 100.0 },
    });
    ns.addVariable({
        componentOf: device,
        browseName: "Setpoint",
        nodeId: "s=Interop.Setpoint",
        dataType: "Float",
        accessLevel: "CurrentRead | CurrentWrite",
        userAccessLevel: "CurrentRead | CurrentWrite",
        value: new Variant({ dataType: DataType.Float, value: 20.0 }),
    });

    let last = -1;
    const update = () => {
        const nowMs = Date.now();
        const second = Math.floor(nowMs / 1000);
        const now = new Date(nowMs);
        sine.setValueFromSource(
            new Variant({ dataType: DataType.Double, value: 10 * Math.sin((2 * Math.PI * (nowMs / 1000)) / 60) }),
            StatusCodes.Good,
            now,
        );
        const step = Math.floor(nowMs / 2000) % 2 === 1 ? 30 : 0;
        const wobble = 0.5 * Math.sin((2 * Math.PI * (nowMs / 1000)) / 2);
        level.setValueFromSource(
            new Variant({ dataType: DataType.Double, value: 100 + wobble + step }),
            StatusCodes.Good,
            now,
        );
        if (second !== last) {
            last = second;
            const ts = new Date(second * 1000);
            counter.setValueFromSource(new Variant({ dataType: DataType.UInt32, value: second >>> 0 }), StatusCodes.Good, ts);
            flag.setValueFromSource(new Variant({ dataType: DataType.Boolean, value: second % 2 === 0 }), StatusCodes.Good, ts);
            label.setValueFromSource(new Variant({ dataType: DataType.String, value: `tick-${second % 10}` }), StatusCodes.Good, ts);
        }
    };
    update();
    faulty.setValueFromSource(new Variant({ dataType: DataType.Double, value: 0.0 }), StatusCodes.BadSensorFailure, new Date());
    stale.setValueFromSource(new Variant({ dataType: DataType.Double, value: 42.5 }), StatusCodes.UncertainLastUsableValue, new Date());
    const timer = setInterval(update, 100);

    await server.start();
    const endpoint = server.getEndpointUrl();
    const certFile = server.certificateFile;
    if (args.ready) {
        const tmp = `${args.ready}.tmp`;
        fs.writeFileSync(tmp, JSON.stringify({ pid: process.pid, endpoint, certificate: certFile }));
        fs.renameSync(tmp, args.ready);
    }
    const stop = async () => {
        clearInterval(timer);
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
