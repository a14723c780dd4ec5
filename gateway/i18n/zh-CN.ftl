# The box's page and the technician's CLI, in Simplified Chinese.
page-title = 医联体网关
switch-language = English
refresh-note = 本页每 10 秒自动刷新。时间均为本地时间（UTC{ $offset }）。

section-overview = 概况
section-devices = 设备
section-recent = 最近收到的数据

label-identity = 本机身份
label-software = 软件版本
label-config = 配置版本
label-clock = 本机时间
label-link = 到县医院的连接
label-central = 中心地址
label-rtt = 往返时延
label-certificate = 证书到期
label-cap = 当前带宽上限
label-spool = 本地存储
label-backlog = 等待上传
label-dead = 无法送达（需管理员处理）

link-up = 已连接
link-down = 已断开
link-connecting = 正在连接
link-revoked = 本机已被中心吊销
link-unknown = 未知
link-since = 自 { $since } 起
link-why = 原因：{ $reason }
cap-unlimited = 不限
spool-usage = 已用 { $used }，上限 { $quota }
backlog-none = 没有等待上传的数据
backlog-lane = { $lane }：{ $items } 项，最早的已等 { $age }
lane-urgent = 紧急
lane-clinical = 临床
lane-bulk = 批量
not-enrolled = 尚未注册

status-ok = 正常
status-warning = 警告
status-fault = 故障

col-device = 设备
col-kind = 类型
col-where = 接入方式
col-state = 状态
col-last-item = 最近一项
col-today = 今天
col-problem = 最近的问题及处理办法
col-received = 收到时间
col-patient = 患者 ID
col-lane = 通道
col-delivery = 是否已送达县医院

family-hl7 = 检验系统（HL7）
family-astm = 检验仪器（ASTM）
family-dicom = 影像设备（DICOM）
family-folder = 共享文件夹
family-serial = 心电图机（串口）

device-listening = 等待设备连接
device-connected = 已连接（{ $count } 个连接）
device-watching = 正在监视文件夹
device-port-present = 串口已就绪
device-port-missing = 找不到串口
device-folder-missing = 找不到文件夹
device-not-listening = 未能监听端口
never = 从未收到
no-problem = 无

advice-port-missing = 请检查串口线是否插好、心电图机是否已开机。
advice-folder-missing = 请检查设备写入的文件夹路径是否正确，或在配置中加上 create = true。
advice-not-listening = 这个端口被另一个程序占用，请联系县里的管理员。
problem-spool-full = 本机存储已满，设备稍后会重发；请检查到县医院的连接是否正常。
problem-spool-failing = 本机存储出错，数据未能保存；请联系县里的管理员。
problem-at = （{ $at }）

recent-none = 还没有收到任何数据。
delivery-delivered = 已送达
delivery-waiting = 等待上传
delivery-dead = 无法送达
quarantined = 已隔离待审核：{ $reason }

section-diagnostics = 诊断
diag-no-pin = 设置 PIN（在配置的 [page] 中设置 pin，或注册时用 `yilian-gateway enroll --pin`）后，可以在这里做诊断。
diag-pin = PIN
diag-login = 登录
diag-logout = 退出
diag-check-link = 测试到县医院的连接
diag-check-folder = 检查文件夹 { $folder } 是否可写
diag-bundle = 下载支持包（不含患者数据和密钥）
login-wrong = PIN 不正确。
login-locked = PIN 错误次数过多，请 5 分钟后再试。
login-no-pin = 本机没有设置 PIN。
check-link-up = 连接正常，往返 { $rtt } 毫秒。
check-link-down = 连接已断开：{ $reason }
check-folder-ok = 文件夹 { $folder } 可写。
check-folder-failed = 文件夹 { $folder } 不可写：{ $error }
check-folder-unknown = 没有这个文件夹。
diag-echo = 测试影像设备 { $ae }（C-ECHO）
echo-ok = { $ae } 应答正常，用时 { $ms } 毫秒。
echo-failed = { $ae } 没有应答：{ $error }

# `yilian-gateway status`
cli-link = 连接：    { $state }，中心 { $central }（{ $since }）
cli-link-for = 已持续 { $age }，自 { $time } 起
cli-rtt = ，往返 { $rtt } 毫秒
cli-as = ，本机身份 { $id }
cli-last-error = 最近的错误：{ $error }
cli-link-unknown = 连接：    未知（网关没有运行，或它的 metrics 监听在别处）
cli-spool = 存储：    已用 { $used }，上限 { $quota }，无法送达 { $dead } 项，已送达保留 { $kept } 项
cli-disk-small = 磁盘容量小于配置的上限 { $quota }；请调低 [spool] 中的 quota
cli-waiting = 待上传：
cli-recent = 最近：
cli-ecg = 心电图：
cli-col-lane = 通道
cli-col-items = 项数
cli-col-bytes = 大小
cli-col-oldest = 最早
cli-col-ago = 多久前
cli-col-source = 来源
cli-col-kind = 类型
cli-col-size = 大小
cli-col-state = 状态
cli-col-received = 收到时间
cli-col-device = 设备
cli-col-patient = 患者 ID
cli-delivered = 已送达
cli-waiting-upload = 等待上传
cli-dead = 未送达（无法送达，见 dead-letters）
cli-quarantined = { $state }，已隔离：{ $reason }
item-ready = 待上传
item-uploading = 上传中
item-delivered = 已送达
item-dead = 无法送达

section-dead = 无法送达的数据
col-reason = 原因
diag-requeue = 重新发送
requeued = 已重新排队，将再次上传。
requeue-failed = 无法重新排队：{ $error }

label-clock-offset = 与中心的时差
clock-offset = { $secs } 秒
clock-off-advice = 本机时钟与中心相差太多，证书可能失效；请检查时间同步（NTP）。
io-permission = 没有写入权限（请检查文件夹的属主和权限）
io-not-found = 文件夹不存在
io-full = 磁盘已满
io-other = 无法写入

## 上级医院回传的报告（`status`）
cli-reports = 报告：
cli-reports-summary = 已从上级医院收到 { $received } 份；{ $sinks }
cli-report-sink = { $sink }：已送达 { $delivered }，待送 { $waiting }，被拒 { $failed }
report-final = 正式报告
report-preliminary = 初步报告
report-corrected = 更正报告
report-urgent = ，危急值/急诊
report-sink-delivered = 已送达
report-sink-waiting = 待送
report-sink-failed = 被拒收

## 页面：回传报告
section-reports = 上级医院回传的报告
reports-none = 还没有收到回传的报告。
reports-no-sink = 没有配置报告去向：报告保存在本机，但不会送到诊所的电脑、打印机或 HIS。请添加 [[report_sink]]（文件夹、打印机或 HIS）。
col-report = 报告
col-delivered-to = 送达
report-urgent-word = 危急值/急诊

## 报告未能送达的原因（以及怎么办）
why-folder-unwritable = 无法写入报告文件夹（{ $detail }）：请确认共享文件夹已挂载且本机可写
why-folder-read-only = 报告文件夹对本机是只读的（{ $detail }）：服务只能写入 /srv/yilian 下的目录；请把文件夹放到那里，或在 yilian-gateway.service 的 drop-in 中为它添加 ReadWritePaths=
why-box-disk = 无法读取本机磁盘上的报告（{ $detail }）；如反复出现，请联系县里的管理员
why-report-unreadable = 上级医院发来的报告无法读取（{ $detail }）；请告知上级医院的诊断科室
why-his-unreachable = 连不上 HIS（{ $detail }）：请确认 HIS 已开启并在该地址监听
why-his-no-ack = HIS 在 { $detail } 内没有应答；会自动重发
why-his-bad-ack = HIS 的应答不对（{ $detail }）；会自动重发
why-his-refused = HIS 拒收了这份报告（{ $detail }）；请向 HIS 厂家询问原因
why-his-rebuild = 无法按 HIS 的要求改写这份报告（{ $detail }）；请检查此接收端的 charset 和 embed_pdf 设置
why-his-busy = HIS 暂时不能接收（{ $detail }）；会自动重发
why-printer-missing = 本机无法打印：没有安装 CUPS（lp）（{ $detail }）
why-printer-failed = 打印机无法打印这份报告（{ $detail }）：请确认打印机已开机、有纸；在本机运行 `lpstat -p` 可查看详情

## `check-config` 与 `enroll`
check-folder-missing = { $path } 不存在：请确认设备把文件写到哪里（或加上 `create = true` 自动创建）
check-not-a-folder = { $path } 不是文件夹
check-port-missing = 串口 { $port } 不存在：设备插好了吗？`ls /dev/serial/by-id/` 可列出现有的串口
check-file-missing = { $path } 不存在
check-problem-at = { $path }，第 { $line } 行：{ $key }：{ $message }
check-problem = { $path }：{ $key }：{ $message }
check-problems = { $path } 中有 { $count } 个问题
check-not-enrolled = 尚未注册：中心地址来自注册令牌
check-central = 中心 { $central }
check-valid = { $path }：配置有效（{ $devices } 台设备，{ $sinks } 个报告去向，{ $central }）
enroll-done = 已注册为 { $identity }，中心 { $central }；证书有效期至 { $until }（通过链路自动续期）
enroll-identity = 身份文件：{ $dir }
enroll-wrote-config = 已写入配置文件 { $path }（设备配置由中心下发）
enroll-pin-set = 已设置页面 PIN：本机页面上的操作需要输入它
enroll-next = 下一步：systemctl start yilian-gateway

## 链路故障的含义（页面、`status`）
link-why-resolve = 本机找不到中心的地址：请检查诊所的 DNS 和配置中的地址。
link-why-timeout = 中心没有应答：诊所的网络通吗？（可在诊所电脑上打开一个网站试试。）
link-why-refused = 中心拒绝了本机的会话：本机软件可能需要升级，请联系县里的管理员。
link-why-box = 本机磁盘有问题，请联系县里的管理员。
link-why-certificate = 中心不接受本机的证书（过期、已吊销或不属于本网络）：请联系县里的管理员。
link-why-closed = 中心关闭了连接（正在重启，或本机重复连接）；本机会自动重连。
link-why-network = 本机与中心之间的网络中断；本机会自动重连。若持续，请检查诊所的网络。
link-why-revoked = 本机已被中心吊销，需要用新的令牌重新注册。

## C-ECHO 失败的原因（检查什么）
echo-why-unreachable = 本机连不上它（{ $detail }）：设备开机并接入网络了吗？地址和端口对吗？
echo-why-rejected = 它拒绝了本机（{ $detail }）：需要在设备的发送目标里添加本机的 AE 名称
echo-why-no-verification = 它不支持连通性测试（C-ECHO）；可以改为发送一幅图像试试
echo-why-broken = 测试过程中连接中断（{ $detail }）
echo-why-status = 它返回了错误状态（{ $detail }）

## 回给诊所 HL7 发送方的应用确认
why-ack-no-address = 该发送方要求收到检验系统的应答，但没有为它配置 app_ack_address（{ $detail }）：请在它的 [[hl7.peer]] 中添加
why-ack-no-connection = 该发送方要求收到检验系统的应答，但现在没有连到本机（{ $detail }）；它再次连接时会发出，或在它的 [[hl7.peer]] 中配置 app_ack_address
why-ack-unreachable = 发送方暂时不能接收检验系统的应答（{ $detail }）；会自动重发
why-ack-refused = 发送方拒收了检验系统的应答（{ $detail }）

## 诊所的 DICOM 阅片端
why-viewer-unreachable = 连不上 DICOM 阅片端（{ $detail }）：它开机并在该地址监听了吗？
why-viewer-refused-class = 阅片端不接收这类报告（{ $detail }）：请在阅片端开启 Encapsulated PDF 和 SR 存储
why-viewer-refused = 阅片端拒收了这份报告（{ $detail }）
