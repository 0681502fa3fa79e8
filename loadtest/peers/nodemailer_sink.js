// nodemailer smtp-server that reads every message and discards it (a peer for loadtest/compare.py).
// usage: node loadtest/peers/nodemailer_sink.js PORT   (needs: npm install --prefix loadtest/peers smtp-server)
"use strict";
const { SMTPServer } = require("smtp-server");

const port = Number(process.argv[2] || 2525);
const server = new SMTPServer({
  authOptional: true,
  disabledCommands: ["AUTH"],
  disableReverseLookup: true, // smtpfront does no reverse lookup by default either
  logger: false,
  onData(stream, session, callback) {
    stream.on("end", () => callback(null, "Ok: discarded"));
    stream.resume(); // consume the body without keeping it
  },
});
server.on("error", (err) => console.error(err.message));
server.listen(port, "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
