import MNC
print("mnc")
