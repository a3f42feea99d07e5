"""Analog hardware simulated around the energy blocks: device non-idealities (`nonideal`: programming and read
noise, conductance range and levels, DAC/ADC) and analog optimizers (`optimizers`: Analog SGD, Tiki-Taka)."""
