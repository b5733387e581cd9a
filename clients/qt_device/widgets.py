"""The simulator's widgets. They render ``DeviceView``s and forward clicks; nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable

from PyQt5.QtCore import QEvent, QObject, QRectF, QSize, Qt
from PyQt5.QtGui import QCloseEvent, QColor, QPainter, QPaintEvent, QPen
from PyQt5.QtWidgets import (
    QApplication,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QStyleOptionButton,
    QVBoxLayout,
    QWidget,
)

from clients.qt_device.device import DeviceView, Link, SimulatedDevice
from clients.qt_device.protocol import LED_COUNT, Button, describe_rgba, intensity_of, rgb_of

log = logging.getLogger(__name__)

DEFAULT_DEVICE_ID = "test_client"
DEFAULT_SERVER = "localhost:50051"
PANELS_PER_ROW = 3
# Fixed so that panels do not jump around as their status lines change; two
# fit side by side on an 800-pixel screen (Qt's offscreen one, a small laptop).
PANEL_WIDTH = 360
# The gadget's body: a dark rounded box holding its LEDs and buttons, so each
# device reads as one object and the words about it sit beneath it.
GADGET_STYLE = "#gadget { background: #3b3f45; border: 2px solid #23262a; border-radius: 12px; }"


class LedWidget(QWidget):
    """A round LED. Fill = ``rgba >> 8``, exactly what the stock client paints;
    the intensity (alpha) is drawn as the strength of a halo around it, so a
    dimmed LED still shows the colour the server chose."""

    DIAMETER = 30

    def __init__(self, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index = index
        self.rgba = 0
        self.setFixedSize(QSize(self.DIAMETER + 8, self.DIAMETER + 8))
        self.setToolTip(f"LED {index}: off")

    def color(self) -> QColor:
        return QColor.fromRgb(rgb_of(self.rgba))

    def set_rgba(self, rgba: int) -> None:
        if rgba != self.rgba:
            self.rgba = rgba
            self.setToolTip(f"LED {self.index}: {describe_rgba(rgba)} (0x{rgba:08x})")
            self.update()

    def paintEvent(self, event: QPaintEvent | None) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        lit = rgb_of(self.rgba) != 0
        if lit:
            halo = self.color()
            halo.setAlpha(intensity_of(self.rgba) // 2)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(halo)
            painter.drawEllipse(QRectF(self.rect()))
        painter.setPen(QPen(QColor("#444"), 1.5))
        painter.setBrush(self.color() if lit else QColor("#111"))
        painter.drawEllipse(QRectF(self.rect()).adjusted(4, 4, -4, -4))


def fit_captions(button: QPushButton, *captions: str) -> None:
    """Let ``button`` be as narrow as its widest caption allows, and no narrower.

    The styles ask 80 pixels of every push button with text, which four
    buttons abreast in a panel cannot all have; what a caption needs is its
    text plus the style's margins and frame."""
    option = QStyleOptionButton()
    button.initStyleOption(option)
    option.text = ""  # the 80-pixel floor applies only to buttons with text
    metrics = button.fontMetrics()
    text = QSize(max(metrics.horizontalAdvance(c) for c in captions), metrics.height())
    style = button.style()
    if style is None:
        return
    size = style.sizeFromContents(QStyle.ContentsType.CT_PushButton, option, text, button)
    button.setMinimumWidth(size.width())
    button.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)


class DevicePanel(QGroupBox):
    def __init__(
        self,
        device: SimulatedDevice,
        *,
        device_id: str = DEFAULT_DEVICE_ID,
        server: str = DEFAULT_SERVER,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Device", parent)
        self.device = device
        self.device_id_edit = QLineEdit(device_id)
        self.server_edit = QLineEdit(server)
        self.leds = [LedWidget(i) for i in range(LED_COUNT)]
        self.connect_button = QPushButton("Connect")
        self.mode_button = QPushButton("Mode")
        self.play_button = QPushButton("Play")
        self.stop_button = QPushButton("Stop")
        self.state_label = QLabel()
        self.mode_label = QLabel()
        self.audio_label = QLabel()
        self.warning_label = QLabel()
        self.warning_label.setStyleSheet("color: #b35900")
        for label in (self.state_label, self.mode_label, self.audio_label, self.warning_label):
            label.setWordWrap(True)

        fields = QFormLayout()
        fields.addRow("Device id", self.device_id_edit)
        fields.addRow("Server", self.server_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(fields)
        self.gadget = self._gadget()
        layout.addWidget(self.gadget)
        for label in (self.state_label, self.mode_label, self.audio_label, self.warning_label):
            layout.addWidget(label)
        layout.addStretch()
        self.setFixedWidth(PANEL_WIDTH)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Maximum)

        self.connect_button.clicked.connect(self._on_connect)
        self.mode_button.clicked.connect(lambda: device.press(Button.MODE))
        self.play_button.clicked.connect(lambda: device.press(Button.PLAY))
        self.stop_button.clicked.connect(lambda: device.press(Button.STOP))
        device.changed.connect(self.show_view)
        self.show_view(device.view)

    def _gadget(self) -> QFrame:
        """The device itself, laid out as on the gadget: its row of LEDs above
        its row of four buttons, in one framed body."""
        gadget = QFrame()
        gadget.setObjectName("gadget")
        gadget.setStyleSheet(GADGET_STYLE)
        led_row = QHBoxLayout()
        led_row.addStretch()
        for led in self.leds:
            led_row.addWidget(led)
        led_row.addStretch()
        buttons = QHBoxLayout()
        for button in (self.connect_button, self.mode_button, self.play_button, self.stop_button):
            fit_captions(button, "Disconnect" if button is self.connect_button else button.text())
            buttons.addWidget(button)
        body = QVBoxLayout(gadget)
        body.setContentsMargins(12, 10, 12, 12)
        body.addLayout(led_row)
        body.addLayout(buttons)
        return gadget

    def _on_connect(self) -> None:
        self.device.toggle(self.server_edit.text(), self.device_id_edit.text())

    def show_view(self, view: DeviceView) -> None:
        offline = view.link is Link.OFFLINE
        online = view.link is Link.ONLINE
        self.setTitle(view.device_id or self.device_id_edit.text() or "Device")
        self.connect_button.setText("Connect" if offline else "Disconnect")
        # While disconnecting, wait for the connection to confirm before
        # offering Connect again: there is never more than one session.
        self.connect_button.setEnabled(view.link is not Link.CLOSING)
        for button in (self.mode_button, self.play_button, self.stop_button):
            button.setEnabled(online)
        self.device_id_edit.setEnabled(offline)
        self.server_edit.setEnabled(offline)
        for led, rgba in zip(self.leds, view.leds, strict=True):
            led.set_rgba(rgba)
        self.state_label.setText(f"State: {view.state_text}")
        self.mode_label.setText(f"Mode: {view.mode_text}")
        acks = f" · buttons {view.acks}/{view.presses} acked" if view.presses else ""
        self.audio_label.setText(f"Audio: {view.audio}{acks}")
        self.warning_label.setText(f"⚠ {view.warning}" if view.warning else "")
        self.warning_label.setVisible(bool(view.warning))


DeviceFactory = Callable[[], SimulatedDevice]


class DeviceScrollArea(QScrollArea):
    """A scroll area that asks for room for all of its content.

    ``QScrollArea.sizeHint`` caps the content at 36 by 24 lines of text, which
    cut the second device and the Audio line off behind scroll bars; this one
    asks for the whole content, and the window caps that at the screen."""

    def sizeHint(self) -> QSize:
        content = self.widget()
        if content is None:
            return super().sizeHint()
        frame = 2 * self.frameWidth()
        hint = content.sizeHint()
        # Word-wrapped status lines make a panel taller than its plain hint.
        if content.hasHeightForWidth():
            hint.setHeight(max(hint.height(), content.heightForWidth(hint.width())))
        return hint + QSize(frame, frame)


class MainWindow(QMainWindow):
    """Any number of device panels in one window, plus "Add device"."""

    def __init__(
        self,
        make_device: DeviceFactory,
        *,
        server: str = DEFAULT_SERVER,
        device_id: str = DEFAULT_DEVICE_ID,
        same_room: bool = False,
    ) -> None:
        super().__init__()
        self.setWindowTitle("Device simulator")
        self._make_device = make_device
        self._server = server
        self._device_id = device_id
        self._same_room = same_room
        self.panels: list[DevicePanel] = []

        self.add_button = QPushButton("Add device")
        self.add_button.clicked.connect(self._on_add)
        self.connect_all_button = QPushButton("Connect all")
        self.connect_all_button.clicked.connect(self.connect_all)
        toolbar = QHBoxLayout()
        toolbar.addWidget(self.add_button)
        toolbar.addWidget(self.connect_all_button)
        toolbar.addStretch()
        self._grid = QGridLayout()
        # The empty column and row after the panels take the slack, so
        # panels stay packed at the top left however large the window.
        self._grid.setColumnStretch(PANELS_PER_ROW, 1)
        self._grid.setRowStretch(1_000, 1)
        grid_host = QWidget()
        grid_host.setLayout(self._grid)
        # A panel that grows (a warning line appears) grows the window too.
        grid_host.installEventFilter(self)
        self.scroll_area = DeviceScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setWidget(grid_host)
        self._central = QWidget()
        layout = QVBoxLayout(self._central)
        layout.addLayout(toolbar)
        layout.addWidget(self.scroll_area)
        self.setCentralWidget(self._central)

    def add_device(self) -> DevicePanel:
        n = len(self.panels) + 1
        # Distinct ids put each panel in its own room; --same-room puts them
        # all in one, to watch the hub fan out to several devices.
        device_id = self._device_id if n == 1 or self._same_room else f"{self._device_id}-{n}"
        panel = DevicePanel(self._make_device(), device_id=device_id, server=self._server)
        row, column = divmod(n - 1, PANELS_PER_ROW)
        self._grid.addWidget(panel, row, column, Qt.AlignmentFlag.AlignTop)
        self.panels.append(panel)
        self.fit_to_devices()
        return panel

    def fit_to_devices(self) -> None:
        """Grow the window until every device shows without scrolling, as far
        as the screen allows; once shown, never shrink what the user enlarged."""
        # The scroll area's size hint follows its content, but the layouts
        # above it cache it: tell them it changed (updateGeometry alone does
        # not reach a parent layout while the window is not yet shown).
        self.scroll_area.updateGeometry()
        self._central.updateGeometry()
        for layout in (self._central.layout(), self.layout()):
            if layout is not None:
                layout.invalidate()
        wanted = self.sizeHint()
        screen = self.screen() or QApplication.primaryScreen()
        if screen is not None:
            wanted = wanted.boundedTo(screen.availableGeometry().size())
        self.resize(self.size().expandedTo(wanted) if self.isVisible() else wanted)

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:
        if event is not None and event.type() == QEvent.Type.LayoutRequest:
            self.fit_to_devices()
        return super().eventFilter(watched, event)

    def _on_add(self) -> None:
        self.add_device()

    def connect_all(self) -> None:
        for panel in self.panels:
            if panel.device.view.link is Link.OFFLINE:
                panel.connect_button.click()

    def shutdown(self) -> None:
        for panel in self.panels:
            panel.device.shutdown()

    def closeEvent(self, event: QCloseEvent | None) -> None:
        self.shutdown()
        super().closeEvent(event)
