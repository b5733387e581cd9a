"""A PyQt5 simulator of the audio device that talks to the hub's DeviceService."""
