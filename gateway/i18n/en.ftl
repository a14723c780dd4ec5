# The box's page and the technician's CLI, in English.
page-title = Yilian gateway
switch-language = 中文
refresh-note = This page refreshes every 10 seconds. Times are local (UTC{ $offset }).

section-overview = Overview
section-devices = Devices
section-recent = Recently received

label-identity = This box
label-software = Software
label-config = Configuration
label-clock = Clock
label-link = Link to the county hospital
label-central = Central
label-rtt = Round trip
label-certificate = Certificate expires
label-cap = Bandwidth cap now
label-spool = Local storage
label-backlog = Waiting to upload
label-dead = Not deliverable (an admin must look)

link-up = up
link-down = down
link-connecting = connecting
link-revoked = this box was revoked by central
link-unknown = unknown
link-since = since { $since }
link-why = reason: { $reason }
cap-unlimited = unlimited
spool-usage = { $used } used of { $quota }
backlog-none = nothing waiting
backlog-lane = { $lane }: { $items } items, the oldest waiting { $age }
lane-urgent = urgent
lane-clinical = clinical
lane-bulk = bulk
not-enrolled = not enrolled yet

status-ok = OK
status-warning = warning
status-fault = fault

col-device = Device
col-kind = Type
col-where = Connected by
col-state = State
col-last-item = Last item
col-today = Today
col-problem = Last problem and what to do
col-received = Received
col-patient = Patient ID
col-lane = Lane
col-delivery = Reached the county hospital

family-hl7 = Lab system (HL7)
family-astm = Analyzer (ASTM)
family-dicom = Imaging (DICOM)
family-folder = Drop folder
family-serial = ECG cart (serial)

device-listening = waiting for the device
device-connected = connected ({ $count } connections)
device-watching = watching the folder
device-port-present = serial port ready
device-port-missing = serial port missing
device-folder-missing = folder missing
device-not-listening = not listening
never = never
no-problem = none

advice-port-missing = Check that the serial cable is plugged in and the ECG cart is switched on.
advice-folder-missing = Check the folder the device writes to exists at this path, or add create = true to the configuration.
advice-not-listening = Another program holds this port; call the county admin.
problem-spool-full = The box's storage is full; the device will send again. Check the link to the county hospital.
problem-spool-failing = The box's storage is failing and did not keep the data; call the county admin.
problem-at = ({ $at })

recent-none = Nothing received yet.
delivery-delivered = delivered
delivery-waiting = waiting to upload
delivery-dead = not deliverable
quarantined = quarantined for review: { $reason }

section-diagnostics = Diagnostics
diag-no-pin = Set a PIN (pin in [page] of the configuration, or `yilian-gateway enroll --pin`) to run diagnostics here.
diag-pin = PIN
diag-login = Log in
diag-logout = Log out
diag-check-link = Test the link to the county hospital
diag-check-folder = Check folder { $folder } is writable
diag-bundle = Download a support bundle (no patient data, no keys)
login-wrong = Wrong PIN.
login-locked = Too many wrong PINs; try again in 5 minutes.
login-no-pin = This box has no PIN set.
check-link-up = The link is up; round trip { $rtt } ms.
check-link-down = The link is down: { $reason }
check-folder-ok = Folder { $folder } is writable.
check-folder-failed = Folder { $folder } is not writable: { $error }
check-folder-unknown = No such folder.
diag-echo = Test imaging device { $ae } (C-ECHO)
echo-ok = { $ae } answered in { $ms } ms.
echo-failed = { $ae } did not answer: { $error }

# `yilian-gateway status`
cli-link = link:     { $state } to { $central } ({ $since })
cli-link-for = for { $age }, since { $time }
cli-rtt = , rtt { $rtt } ms
cli-as = , as { $id }
cli-last-error = last error: { $error }
cli-link-unknown = link:     unknown (the gateway is not running, or its metrics listener is elsewhere)
cli-spool = spool:    { $used } of { $quota } used, { $dead } dead letter(s), { $kept } delivered kept
cli-disk-small = the disk holds less than the configured quota of { $quota }; lower `quota` in [spool]
cli-waiting = waiting:
cli-recent = recent:
cli-ecg = ecg:
cli-col-lane = LANE
cli-col-items = ITEMS
cli-col-bytes = BYTES
cli-col-oldest = OLDEST
cli-col-ago = AGO
cli-col-source = SOURCE
cli-col-kind = KIND
cli-col-size = SIZE
cli-col-state = STATE
cli-col-received = RECEIVED
cli-col-device = DEVICE
cli-col-patient = PATIENT ID
cli-delivered = delivered
cli-waiting-upload = waiting to upload
cli-dead = NOT delivered (dead letter, see dead-letters)
cli-quarantined = { $state }, QUARANTINED: { $reason }
item-ready = ready
item-uploading = uploading
item-delivered = delivered
item-dead = dead

section-dead = Not deliverable
col-reason = Reason
diag-requeue = Send again
requeued = Queued again; it will be uploaded again.
requeue-failed = Cannot queue it again: { $error }

label-clock-offset = Clock against central
clock-offset = { $secs } s
clock-off-advice = This box's clock is far from central's; its certificate may stop working. Check time synchronisation (NTP).
io-permission = no permission to write (check the folder's owner and mode)
io-not-found = the folder does not exist
io-full = the disk is full
io-other = cannot write there

## Reports from the hospital, in `status`
cli-reports = reports:
cli-reports-summary = { $received } received from the hospital; { $sinks }
cli-report-sink = { $sink }: { $delivered } delivered, { $waiting } waiting, { $failed } refused
report-final = final
report-preliminary = preliminary
report-corrected = CORRECTED
report-urgent = , CRITICAL/STAT
report-sink-delivered = delivered
report-sink-waiting = waiting
report-sink-failed = REFUSED

## The page's report section
section-reports = Reports from the hospital
reports-none = No report has come back yet.
reports-no-sink = No report sink is configured: reports are kept on this box but go nowhere at the clinic. Add a [[report_sink]] (folder, printer or HIS).
col-report = Report
col-delivered-to = Delivered to
report-urgent-word = CRITICAL/STAT

## Why a report did not reach a sink (what to do)
why-folder-unwritable = cannot write into the report folder ({ $detail }): is the share mounted and writable by the box?
why-folder-read-only = the report folder is read-only to the box ({ $detail }): the service may write only under /srv/yilian; put the folder there, or add ReadWritePaths= for it in a drop-in for yilian-gateway.service
why-box-disk = cannot read the report on the box's disk ({ $detail }); if it repeats, call the county admin
why-report-unreadable = the report from the hospital cannot be read ({ $detail }); tell the hospital's reading department
why-his-unreachable = cannot reach the HIS ({ $detail }): is the HIS running and listening at this address?
why-his-no-ack = the HIS did not answer within { $detail }; it is sent again
why-his-bad-ack = the HIS answered something unexpected ({ $detail }); it is sent again
why-his-refused = the HIS refused the report ({ $detail }); ask the HIS vendor why
why-his-rebuild = the report could not be rebuilt for the HIS ({ $detail }); check charset and embed_pdf in this sink
why-his-busy = the HIS cannot take the report now ({ $detail }); it is sent again
why-printer-missing = the box cannot print: CUPS (lp) is not installed ({ $detail })
why-printer-failed = the printer cannot take the report ({ $detail }): is it on, with paper? `lpstat -p` on the box says more

## `check-config` and `enroll`
check-folder-missing = { $path } does not exist: check where the device writes its files (or add `create = true` to make it)
check-not-a-folder = { $path } is not a folder
check-port-missing = serial port { $port } does not exist: is the device plugged in? `ls /dev/serial/by-id/` lists the ports there are
check-file-missing = { $path } does not exist
check-problem-at = { $path }, line { $line }: { $key }: { $message }
check-problem = { $path }: { $key }: { $message }
check-problems = { $count } problem(s) in { $path }
check-not-enrolled = not enrolled yet: central comes from the enrollment token
check-central = central { $central }
check-valid = { $path }: valid ({ $devices } device(s), { $sinks } report sink(s), { $central })
enroll-done = enrolled as { $identity } at { $central }; certificate valid until { $until } (renewed automatically over the link)
enroll-identity = identity: { $dir }
enroll-wrote-config = configuration written to { $path } (devices come from central's published configuration)
enroll-pin-set = the page's PIN is set: actions on the box's page need it
enroll-next = next: systemctl start yilian-gateway

## What a link failure means (the page, `status`)
link-why-resolve = The box cannot find central's address: check the clinic's DNS and the address in the configuration.
link-why-timeout = Central does not answer: is the clinic's internet up? (Try opening a website from the clinic PC.)
link-why-refused = Central refused this box's session: the box's software may need an update; call the county admin.
link-why-box = The box's own disk has a problem; call the county admin.
link-why-certificate = Central does not accept this box's certificate (expired, revoked, or another fleet's): call the county admin.
link-why-closed = Central closed the connection (restarting, or the box connected twice); it reconnects by itself.
link-why-network = The network between the box and central failed; it reconnects by itself. If it lasts, check the clinic's internet.
link-why-revoked = This box was revoked at central; it needs to be enrolled again with a new token.

## Why a C-ECHO failed (what to check)
echo-why-unreachable = the box cannot reach it ({ $detail }): is the modality on and on the network, and are its address and port right?
echo-why-rejected = it refused the box ({ $detail }): the box's AE title must be in the modality's list of destinations
echo-why-no-verification = it does not offer verification (C-ECHO); try sending an image instead
echo-why-broken = the connection broke during the check ({ $detail })
echo-why-status = it answered with an error status ({ $detail })

## Application ACKs to the clinic's HL7 senders
why-ack-no-address = this sender asked for the LIS's answer, but no app_ack_address is configured for it ({ $detail }): add one to its [[hl7.peer]]
why-ack-no-connection = this sender asked for the LIS's answer but has no connection open to the box now ({ $detail }); it is sent when the sender connects again, or configure its app_ack_address in [[hl7.peer]]
why-ack-unreachable = the sender does not take the LIS's answer now ({ $detail }); it is sent again
why-ack-refused = the sender refused the LIS's answer ({ $detail })

## The clinic's DICOM viewer as a report sink
why-viewer-unreachable = cannot reach the DICOM viewer ({ $detail }): is it on and listening at this address?
why-viewer-refused-class = the viewer does not take reports of this kind ({ $detail }): enable Encapsulated PDF and SR storage on it
why-viewer-refused = the viewer refused the report ({ $detail })
